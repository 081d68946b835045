"""Benchmarks: each prints a markdown table and, with --out, writes it to a file."""
from __future__ import annotations

import json

import numpy as np


def emit(text: str, out: str | None) -> int:
    """Print a result table and write it atomically to `out` when given; the exit status."""
    from evonnx.formats.atomic import atomic_write_bytes
    print(text)
    if out:
        atomic_write_bytes(out, (text + "\n").encode())
    return 0


def read_rows(files: list[str]) -> list[dict]:
    """The runs an earlier `--jsonl` appended, from every file in order."""
    from pathlib import Path
    return [json.loads(line) for f in files for line in Path(f).read_text().splitlines() if line.strip()]


def keep_row(row: dict, jsonl: str | None) -> None:
    """Print a finished run as JSON and append it to `jsonl` when given."""
    print(json.dumps(row), flush=True)
    if jsonl:
        with open(jsonl, "a") as f:
            f.write(json.dumps(row) + "\n")


def cells(run, grid: list[tuple], workers: int | None = None, address: str | None = None):
    """`run(*cell)` of each cell of a benchmark grid, in order: in this process, or as Ray tasks on `workers`
    local CPUs or the cluster at `address` (the `distributed` extra; each task on one CPU, one ONNX Runtime
    thread)."""
    if workers is None and address is None:
        return (run(*cell) for cell in grid)
    import os

    from evonnx.passes.engine.fitness import THREADS_ENV
    try:
        from evonnx.passes.engine.distributed import grid as on_ray
    except ModuleNotFoundError as exc:
        raise SystemExit(f"--workers needs Ray: pip install 'evonnx[distributed]' ({exc})") from None
    os.environ[THREADS_ENV] = "1"  # local workers inherit it
    return on_ray(run, grid, workers, address)


def paired_se(reference: np.ndarray, pred: np.ndarray, y: np.ndarray) -> float:
    """Standard error, in points, of the accuracy drop from `reference` to `pred` on the same samples
    (McNemar: from the samples one gets right and the other wrong)."""
    flips = np.count_nonzero((reference == y) != (pred == y))
    return 100.0 * float(np.sqrt(flips)) / len(y)

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


def paired_se(reference: np.ndarray, pred: np.ndarray, y: np.ndarray) -> float:
    """Standard error, in points, of the accuracy drop from `reference` to `pred` on the same samples
    (McNemar: from the samples one gets right and the other wrong)."""
    flips = np.count_nonzero((reference == y) != (pred == y))
    return 100.0 * float(np.sqrt(flips)) / len(y)

"""Benchmarks: each prints a markdown table and, with --out, writes it to a file."""
from __future__ import annotations

import numpy as np


def emit(text: str, out: str | None) -> int:
    """Print a result table and write it atomically to `out` when given; the exit status."""
    from evonnx.formats.atomic import atomic_write_bytes
    print(text)
    if out:
        atomic_write_bytes(out, (text + "\n").encode())
    return 0


def paired_se(reference: np.ndarray, pred: np.ndarray, y: np.ndarray) -> float:
    """Standard error, in points, of the accuracy drop from `reference` to `pred` on the same samples
    (McNemar: from the samples one gets right and the other wrong)."""
    flips = np.count_nonzero((reference == y) != (pred == y))
    return 100.0 * float(np.sqrt(flips)) / len(y)

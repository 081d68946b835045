"""Benchmarks: each prints a markdown table and, with --out, writes it to a file."""
from __future__ import annotations


def emit(text: str, out: str | None) -> int:
    """Print a result table and write it atomically to `out` when given; the exit status."""
    from evonnx.formats.atomic import atomic_write_bytes
    print(text)
    if out:
        atomic_write_bytes(out, (text + "\n").encode())
    return 0

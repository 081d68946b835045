"""`evonnx inspect IN.evx [--json]`: per-tensor and total sizes of an .evx container (runtime/summary.py)."""
from __future__ import annotations

import argparse
import json
import math

from evonnx.runtime.summary import inspect


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("inspect", help="show what an .evx file holds and how well it is coded",
                              description="Per tensor: shape, sparsity, scheme, code width (an entropy-sized grid's "
                                          "is 8 whatever its rate), coded bytes and bits a weight (and zstd -19's "
                                          "for already-quantized integer tensors) and the zero-order entropy bound; "
                                          "in total: original and container bytes.")
    p.add_argument("input", metavar="IN.evx", help="the container to inspect")
    p.add_argument("--json", action="store_true", help="print one JSON object (stable keys)")
    return p


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    return f"{n:.2f} GiB"


def _ratio(x) -> str:
    return "-" if x is None else f"{x:.3f}"


def run(args: argparse.Namespace) -> int:
    rep = inspect(args.input)
    if args.json:
        print(json.dumps(rep, indent=2, sort_keys=False))
        return 0
    rows = [("name", "shape", "dtype", "scheme", "code bits", "sparsity", "mask", "values", "coded", "bits/weight",
             "zstd -19", "H bound", "bits/H")]
    for t in rep["tensors"]:
        bound = "-" if t["entropy_bits"] is None else _fmt_bytes(t["entropy_bits"] / 8)
        entries = math.prod(t["shape"])
        rows.append((t["name"], "x".join(map(str, t["shape"])) or "scalar", t["dtype"], t["scheme"], str(t["bits"]),
                     f"{100 * t['sparsity']:.1f}%", t["mask_codec"], t["value_codec"], _fmt_bytes(t["coded_bytes"]),
                     f"{8 * t['coded_bytes'] / entries:.2f}" if entries else "-",
                     "-" if t["zstd_bytes"] is None else _fmt_bytes(t["zstd_bytes"]), bound,
                     _ratio(t["bits_over_entropy"])))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    print(f"{rep['file']}: .evx {rep['version']}, {len(rep['tensors'])} tensors")
    for r in rows:
        print("  " + "  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip())
    print(f"total: original {_fmt_bytes(rep['original_bytes'])}, container {_fmt_bytes(rep['container_bytes'])}, "
          f"ratio {rep['ratio']:.2f}x; graph {_fmt_bytes(rep['graph_bytes'])} -> "
          f"{_fmt_bytes(rep['graph_coded_bytes'])}; "
          f"coded/entropy {_ratio(rep['bits_over_entropy'])}")
    return 0

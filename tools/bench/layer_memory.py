"""Memory and time of one large layer through quantization, encoding and decoding, per entry.

    python -m evonnx.tools.bench.layer_memory [--rows 8192] [--cols 4096] [--out FILE.md]

A random float32 [rows, cols] weight (Gaussian, per-row scales). Each step runs in a fresh child process that
first loads only what the step reads (the weight, or the record's codes and grids), so its peak RSS above that
is what the step itself allocates; reported in bytes per entry of the layer. A layer of a model over 2 GiB
(268M entries) needs these temporaries times its entries, so each step holds its own below a few bytes:
- quantize: each scheme's fit (`passes/quant/layer.py`), its result (codes and the dequantized weight,
  5 bytes an entry) included;
- encode: the record's bytes (`formats.record.encode_record`), the codes (1 byte an entry) not counted;
- decode: reading the record back and dequantizing it (the float32 weight, 4 bytes an entry, included).
"""
from __future__ import annotations

import argparse
import multiprocessing
import platform
import resource
import tempfile
import time
from pathlib import Path

import numpy as np

from evonnx.tools.bench import emit

SCHEMES = ("uniform/channel/sym@8", "uniform/channel/sym@4", "uniform/channel/rate@3")


def _weight(rows: int, cols: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.standard_normal((rows, cols), dtype=np.float32) * rng.uniform(0.1, 2.0, (rows, 1)).astype(np.float32)


def _peak_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _step(kind: str, rows: int, cols: int, scheme: str, folder: str) -> dict:
    """One step in this (fresh) process: its seconds and its peak RSS above what it starts from."""
    from evonnx.formats.record import encode_record, read_header, read_payload
    from evonnx.formats.tensor import QuantizedTensor, dequantize
    from evonnx.passes.quant.layer import QuantSpec, quantize_weight

    saved = Path(folder) / "record.npz"
    blob_path = Path(folder) / "record.bin"
    if kind == "quantize":
        w = _weight(rows, cols)
        keep = np.ones(w.shape, bool)
        base, start = _peak_bytes(), time.perf_counter()
        q = quantize_weight("w", w, keep, QuantSpec.parse(scheme), 0).tensor
    elif kind == "encode":
        d = np.load(saved)
        q = QuantizedTensor.uniform("w", (rows, cols), "float32", int(d["bits"]), d["codes"], d["scale"], d["zero"],
                                    None, 0)
        base, start = _peak_bytes(), time.perf_counter()
        blob = encode_record(q)
    else:
        blob = blob_path.read_bytes()
        base, start = _peak_bytes(), time.perf_counter()
        weight = dequantize(read_payload(read_header(blob, "record"))[0])
    seconds = time.perf_counter() - start
    out = {"seconds": seconds, "peak": _peak_bytes() - base}
    if kind == "quantize":
        np.savez(saved, codes=q.codes, scale=q.scale, zero=q.zero_point, bits=q.bits)
    elif kind == "encode":
        blob_path.write_bytes(blob)
        out["coded"] = len(blob)
    else:
        out["checked"] = bool(weight.shape == (rows, cols))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=8192)
    p.add_argument("--cols", type=int, default=4096)
    p.add_argument("--out", help="write the table here too")
    args = p.parse_args(argv)
    n = args.rows * args.cols
    lines = [f"machine: {platform.machine()}, {multiprocessing.cpu_count()} cores; a float32 {args.rows}x{args.cols} "
             f"weight ({n / 1e6:.1f}M entries); peak RSS of each step above its inputs, per entry", "",
             "| scheme | step | seconds | peak bytes / entry | coded bytes / entry |", "|---|---|---:|---:|---:|"]
    context = multiprocessing.get_context("spawn")  # a fresh interpreter per step: its peak is the step's
    for scheme in SCHEMES:
        with tempfile.TemporaryDirectory() as folder:
            for kind in ("quantize", "encode", "decode"):
                with context.Pool(1) as pool:
                    r = pool.apply(_step, (kind, args.rows, args.cols, scheme, folder))
                coded = f"{r['coded'] / n:.3f}" if "coded" in r else ""
                lines.append(f"| {scheme} | {kind} | {r['seconds']:.1f} | {r['peak'] / n:.1f} | {coded} |")
    return emit("\n".join(lines), args.out)


if __name__ == "__main__":
    from evonnx.tools.interrupt import entry_point
    raise SystemExit(entry_point(main))

"""A model over protobuf's 2 GiB end to end: compress, decode to a file with external data, run that file.

    python -m evonnx.tools.bench.huge [--width 16384] [--layers 2] [--time-limit 600] [--samples 16]
                                      [--compress-args "--sparsity 0 --bits 8"] [--out FILE.md]

The model (built here with random weights, saved with external data): an input of width/4 features, a
MatMul up to `width`, `layers` square MatMuls of width x width with ReLUs, a 10-way head; 2 layers of
16384 make 604M parameters, 2.4 GB of float32. Each step runs in a child process (peak RSS by wait4):

1. `evonnx compress --metric cosine --time-limit T` (plus `--compress-args`) on random calibration inputs
   (cost, not fidelity);
2. `evonnx decode` of the container: the decoded model must be written with external data;
3. a child loads the decoded file by its path into onnxruntime and compares its logits with the teacher's
   on the calibration inputs (cosine, one session each, never both in memory).

Not part of the test suite (minutes and about 10 GB of memory); `tests/test_loader.py` covers the same
class with the 2 GiB limit lowered.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import shlex
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

from evonnx.tools.bench import emit
from evonnx.tools.bench.scale import _Graph, cache_dir
from evonnx.tools.interrupt import run_child

PROTO_LIMIT = 2**31


def wide(width: int, layers: int, seed: int = 0) -> onnx.ModelProto:
    g = _Graph(seed)
    d_in = width // 4
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", d_in])
    h = g.node("Relu", [g.node("MatMul", ["input", g.weight((d_in, width), d_in)])])
    for _ in range(layers):
        h = g.node("Relu", [g.node("MatMul", [h, g.weight((width, width), width)])])
    g.node("MatMul", [h, g.weight((width, 10), width)])
    return g.model(x, "logits", f"wide-{width}x{layers}")


def build(width: int, layers: int, samples: int) -> tuple[Path, Path]:
    """The model (external data) and its calibration inputs, saved once."""
    path = cache_dir() / f"wide-{width}x{layers}.onnx"
    calib = path.with_name(f"{path.stem}-calib{samples}.npz")
    if not path.is_file():
        tmp = path.with_name(path.name + ".part")
        onnx.save_model(wide(width, layers), str(tmp), save_as_external_data=True, location=path.name + ".data")
        tmp.replace(path)
    if not calib.is_file():
        x = np.random.default_rng(1).standard_normal((samples, width // 4)).astype(np.float32)
        with open(calib.with_name(calib.name + ".part"), "wb") as fh:
            np.savez(fh, input=x)
        calib.with_name(calib.name + ".part").replace(calib)
    return path, calib


RUN = """
import sys, numpy as np, onnxruntime as ort
x = np.load(sys.argv[2])["input"]
y = ort.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
np.save(sys.argv[3], y)
"""


def run_file(model: Path, calib: Path, out: Path) -> dict:
    return run_child([sys.executable, "-c", RUN, str(model), str(calib), str(out)])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m evonnx.tools.bench.huge", description=__doc__.splitlines()[0])
    p.add_argument("--width", type=int, default=16384)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--time-limit", type=float, default=600.0)
    p.add_argument("--samples", type=int, default=16, help="calibration samples")
    p.add_argument("--compress-args", default="", help="more `evonnx compress` options, e.g. a fixed recipe")
    p.add_argument("--out", help="write the table here too")
    args = p.parse_args(argv)
    with multiprocessing.get_context("spawn").Pool(1) as pool:  # the model is built there: a child forked from a
        path, calib = pool.apply(build, (args.width, args.layers, args.samples))  # big parent counts its RSS
    data = path.with_name(path.name + ".data").stat().st_size
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        steps = {"compress": run_child([sys.executable, "-m", "evonnx", "compress", str(path), "-o", str(tmp / "m.evx"),
                                    "--calib", str(calib), "--metric", "cosine", "--time-limit",
                                    str(args.time_limit), "--json", "--quiet", *shlex.split(args.compress_args)])}
        if steps["compress"]["rc"] == 0:
            steps["decode"] = run_child([sys.executable, "-m", "evonnx", "decode", str(tmp / "m.evx"),
                                     "-o", str(tmp / "d.onnx")])
        if steps.get("decode", {}).get("rc") == 0:
            steps["teacher run"] = run_file(path, calib, tmp / "t.npy")
            steps["decoded run"] = run_file(tmp / "d.onnx", calib, tmp / "d.npy")
        external = (tmp / "d.onnx.data").is_file()
        decoded_bytes = [f.stat().st_size for f in (tmp / "d.onnx", tmp / "d.onnx.data") if f.is_file()]
        cosine = None
        if steps.get("decoded run", {}).get("rc") == 0 and steps["teacher run"]["rc"] == 0:
            t, d = (np.load(tmp / f).ravel().astype(np.float64) for f in ("t.npy", "d.npy"))
            cosine = float(t @ d / (np.linalg.norm(t) * np.linalg.norm(d)))
    summary = json.loads(steps["compress"]["stdout"]) if steps["compress"]["rc"] == 0 else {}
    params = args.width // 4 * args.width + args.layers * args.width ** 2 + args.width * 10
    lines = [f"machine: {platform.machine()}, {os.cpu_count()} cores; wide-{args.width}x{args.layers}: "
             f"{params / 1e6:.0f}M parameters, {data / 1e9:.2f} GB of external data (protobuf's limit: "
             f"{PROTO_LIMIT / 1e9:.2f} GB); --time-limit {args.time_limit:g} s {args.compress_args}, "
             f"{args.samples} random inputs", "",
             "| step | exit | wall s | peak RSS GiB | peak RSS / model |", "|---|---:|---:|---:|---:|"]
    for name, s in steps.items():
        lines.append(f"| {name} | {s['rc']}{' (' + s['error'] + ')' if s['rc'] else ''} | {s['wall']:.0f} | "
                     f"{s['rss'] / 2**30:.2f} | {s['rss'] / data:.2f} |")
    lines += ["", f"- container: {summary.get('container_bytes', 0) / 1e6:.1f} MB, ratio "
                  f"{summary.get('ratio', 0):.2f}x, shipped {summary.get('shipped')!r}, held-out "
                  f"{summary.get('held_out', {}).get('points', float('nan')):.3g} points of cosine",
              f"- decoded file: {' + '.join(f'{b / 1e9:.2f} GB' for b in decoded_bytes)}"
              f" ({'with' if external else 'WITHOUT'} external data); logits cosine to the teacher's, each run "
              f"from its file: {cosine if cosine is None else f'{cosine:.6f}'}"]
    return emit("\n".join(lines), args.out)


if __name__ == "__main__":
    from evonnx.tools.interrupt import entry_point
    raise SystemExit(entry_point(main))

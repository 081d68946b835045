"""How the cost of compression grows with model size: a ladder of CNNs and transformers of 1M-60M parameters.

    python -m evonnx.tools.bench.scale [--sizes 1 5 25 60] [--kinds cnn transformer] [--time-limit 120]
                                       [--samples 32] [--out FILE.md]

The ladder is built here with random weights (He-initialised), since what is measured is cost, not fidelity:
- cnn-<P>M: a stride-4 stem to 8x8, then 3x3 convolutions of C channels with ReLU, global pooling, a classifier;
- transformer-<P>M: 32 tokens of width D, pre-LayerNorm blocks (single-head attention, a GELU MLP of 4D).
For each model, in one run:
- one candidate evaluation by the fitness engine (weights fed as inputs) against a forward of the baked model;
- `evonnx compress --time-limit T` in a child process: wall time against the limit, and peak RSS against the
  model's bytes plus all of its activations on the calibration samples (the most the search could cache).
Children start from a small forkserver process: a child forked from this one would count its memory in
its own peak RSS.
"""
from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from evonnx.tools.bench import emit
from evonnx.tools.interrupt import run_child

OPSET, IR_VERSION = 17, 10
TOKENS, CLASSES = 32, 10
# parameters (millions) -> (width, depth), each within a few percent of the size
CNN = {1: (128, 7), 5: (256, 8), 25: (512, 11), 60: (768, 11)}
TRANSFORMER = {1: (128, 5), 5: (256, 6), 25: (512, 8), 60: (768, 8)}


def cache_dir() -> Path:
    root = Path(os.environ.get("EVONNX_CACHE") or Path.home() / ".cache" / "evonnx") / "scale"
    root.mkdir(parents=True, exist_ok=True)
    return root


class _Graph:
    """A tiny graph builder: named random weights, nodes, and the final model."""

    def __init__(self, seed: int):
        self.rng, self.nodes, self.inits, self.n = np.random.default_rng(seed), [], [], 0

    def weight(self, shape: tuple[int, ...], fan_in: int | None = None, value: float | None = None) -> str:
        name = f"w{len(self.inits)}"
        array = (np.full(shape, value, np.float32) if value is not None else
                 (self.rng.standard_normal(shape) * math.sqrt(2.0 / fan_in)).astype(np.float32))
        self.inits.append(numpy_helper.from_array(array, name))
        return name

    def node(self, op: str, inputs: list[str], **attrs) -> str:
        self.n += 1
        out = f"t{self.n}"
        self.nodes.append(helper.make_node(op, inputs, [out], name=f"{op}_{self.n}", **attrs))
        return out

    def model(self, x: onnx.ValueInfoProto, y: str, name: str) -> onnx.ModelProto:
        self.nodes[-1].output[0] = "logits"
        out = helper.make_tensor_value_info("logits", TensorProto.FLOAT, None)
        graph = helper.make_graph(self.nodes, name, [x], [out], self.inits)
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION)


def cnn(width: int, depth: int, seed: int = 0) -> onnx.ModelProto:
    g = _Graph(seed)
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, 32, 32])
    h = g.node("Relu", [g.node("Conv", ["input", g.weight((width, 3, 4, 4), 48), g.weight((width,), value=0.0)],
                               strides=[4, 4])])
    for _ in range(depth):
        h = g.node("Relu", [g.node("Conv", [h, g.weight((width, width, 3, 3), 9 * width),
                                            g.weight((width,), value=0.0)], pads=[1, 1, 1, 1])])
    h = g.node("Flatten", [g.node("GlobalAveragePool", [h])])
    g.node("Gemm", [h, g.weight((CLASSES, width), width), g.weight((CLASSES,), value=0.0)], transB=1)
    return g.model(x, "logits", f"cnn-{width}x{depth}")


def transformer(width: int, depth: int, seed: int = 0) -> onnx.ModelProto:
    g = _Graph(seed)
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", TOKENS, width])

    def norm(h: str) -> str:
        return g.node("LayerNormalization", [h, g.weight((width,), value=1.0), g.weight((width,), value=0.0)],
                      axis=-1)

    def linear(h: str, n_in: int, n_out: int) -> str:
        return g.node("Add", [g.node("MatMul", [h, g.weight((n_in, n_out), n_in)]), g.weight((n_out,), value=0.0)])

    scale = g.weight((), value=1.0 / math.sqrt(width))
    half, root2 = g.weight((), value=0.5), g.weight((), value=math.sqrt(2.0))
    one = g.weight((), value=1.0)
    h = "input"
    for _ in range(depth):
        a = norm(h)
        q, k, v = (linear(a, width, width) for _ in range(3))
        scores = g.node("Mul", [g.node("MatMul", [q, g.node("Transpose", [k], perm=[0, 2, 1])]), scale])
        attended = g.node("MatMul", [g.node("Softmax", [scores], axis=-1), v])
        h = g.node("Add", [h, linear(attended, width, width)])
        u = linear(norm(h), width, 4 * width)
        gelu = g.node("Mul", [g.node("Mul", [u, half]), g.node("Add", [g.node("Erf", [g.node("Div", [u, root2])]),
                                                                      one])])
        h = g.node("Add", [h, linear(gelu, 4 * width, width)])
    pooled = g.node("ReduceMean", [norm(h)], axes=[1], keepdims=0)
    g.node("Gemm", [pooled, g.weight((CLASSES, width), width), g.weight((CLASSES,), value=0.0)], transB=1)
    return g.model(x, "logits", f"transformer-{width}x{depth}")


def build(kind: str, size: int) -> Path:
    """The ladder model `kind`-`size`M, saved once (external data above 2 GiB)."""
    path = cache_dir() / f"{kind}-{size}M.onnx"
    if not path.is_file():
        width, depth = (CNN if kind == "cnn" else TRANSFORMER)[size]
        model = (cnn if kind == "cnn" else transformer)(width, depth)
        tmp = path.with_name(path.name + ".part")
        onnx.save_model(model, str(tmp))
        tmp.replace(path)
    return path


def calibration(path: Path, samples: int) -> Path:
    out = path.with_name(f"{path.stem}-calib{samples}.npz")
    if not out.is_file():
        dims = [d.dim_value or samples for d in onnx.load(str(path), load_external_data=False)
                .graph.input[0].type.tensor_type.shape.dim]
        x = np.random.default_rng(1).standard_normal(dims).astype(np.float32)
        with open(out.with_name(out.name + ".part"), "wb") as fh:
            np.savez(fh, input=x)
        out.with_name(out.name + ".part").replace(out)
    return out


def activation_bytes(path: Path, samples: int) -> int:
    """Bytes of every float value the model computes on `samples` inputs (shape inference, batch = samples)."""
    model = onnx.load(str(path), load_external_data=False)
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = samples
    inferred = onnx.shape_inference.infer_shapes(model)
    total = 0
    for v in inferred.graph.value_info:
        dims = [d.dim_value for d in v.type.tensor_type.shape.dim]
        if v.type.tensor_type.elem_type == TensorProto.FLOAT and dims and all(dims):
            total += 4 * int(np.prod(dims))
    return total


def engine_cost(path: Path, calib: Path, repeats: int = 5) -> dict:
    """Seconds of a baked forward, and one candidate's cost through the engine as a multiple of it."""
    from evonnx.passes.engine.calib import load_npz
    from evonnx.passes.engine.fitness import FitnessEngine, Runner
    from evonnx.passes.state import load_state
    from evonnx.tools.bench.engine_cost import _interleaved_ratio
    state = load_state(path)
    data = load_npz(calib, state.model)
    engine = FitnessEngine(state.model, data, state.targets, device="auto", batch_size=data.num_samples,
                           held=state.held)
    baked = Runner(state.model, engine.providers, held=state.held)
    batch = engine.batches[0]
    layer = state.targets[len(state.targets) // 2]
    candidate = {layer: state.original(layer) * (np.random.default_rng(0).random(state.table[layer].shape) > 0.5)}
    seconds, ratio = _interleaved_ratio(lambda: baked.run(batch), lambda: engine.outputs(candidate), repeats)
    return {"params": sum(state.table[n].size for n in state.table.weights), "forward": seconds, "fed": ratio,
            "provider": engine.provider}


def compress_child(path: Path, calib: Path, time_limit: float) -> dict:
    """`evonnx compress` in a child process: wall seconds, peak RSS (bytes), its summary or error."""
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "evonnx", "compress", str(path), "-o", str(Path(tmp) / "out.evx"),
               "--calib", str(calib), "--metric", "cosine", "--time-limit", str(time_limit), "--json", "--quiet"]
        res = run_child(cmd)
    out = {k: res[k] for k in ("wall", "rss", "rc")}
    return {**out, "error": (res["error"] or "?")[:100]} if res["rc"] != 0 else {**out, "summary": json.loads(res["stdout"])}


def baseline_rss() -> int:
    """Peak RSS (bytes) of a child that only imports what `compress` imports: the fixed cost of any run."""
    code = "import onnxruntime, evonnx.passes.compress, evonnx.passes.directed_evolution, evonnx.passes.bit_allocation"
    proc = subprocess.Popen([sys.executable, "-c", code])
    return os.wait4(proc.pid, 0)[2].ru_maxrss * 1024


def table(rows: list[dict], time_limit: float, samples: int, base: int) -> str:
    lines = [f"machine: {platform.machine()}, {os.cpu_count()} cores; --time-limit {time_limit:g} s, "
             f"{samples} calibration samples (random inputs: cost, not fidelity); a run's fixed cost (the "
             f"imports) is {base / 2**20:.0f} MiB of RSS, taken off before the ratio to model + activations", "",
             "| model | params | file MB | forward s | candidate / forward | compress s | over the limit | "
             "ratio | peak RSS MiB | (RSS - fixed) / (model + activations) | provider |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        c = r["compress"]
        ratio = f"{c['summary']['ratio']:.1f}×" if "summary" in c else f"fails (exit {c['rc']}: {c['error']})"
        lines.append(f"| {r['name']} | {r['params'] / 1e6:.1f}M | {r['bytes'] / 2**20:.0f} | {r['forward']:.3f} | "
                     f"{r['fed']:.2f} | {c['wall']:.0f} | {100 * (c['wall'] / time_limit - 1):+.0f} % | {ratio} | "
                     f"{c['rss'] / 2**20:.0f} | {(c['rss'] - base) / (r['bytes'] + r['activations']):.2f} | "
                     f"{r['provider']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m evonnx.tools.bench.scale", description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=list(CNN), choices=list(CNN), help="millions of params")
    p.add_argument("--kinds", nargs="+", default=["cnn", "transformer"], choices=["cnn", "transformer"])
    p.add_argument("--time-limit", type=float, default=120.0)
    p.add_argument("--samples", type=int, default=32, help="calibration samples")
    p.add_argument("--out", help="write the table here too")
    args = p.parse_args(argv)
    small = multiprocessing.get_context("forkserver").Pool(1)  # started while this process is still small
    base = small.apply(baseline_rss)
    rows = []
    for kind in args.kinds:
        for size in args.sizes:
            path = build(kind, size)
            calib = calibration(path, args.samples)
            row = {"name": f"{kind}-{size}M", "bytes": path.stat().st_size,
                   "activations": activation_bytes(path, args.samples), **engine_cost(path, calib)}
            row["compress"] = small.apply(compress_child, (path, calib, args.time_limit))
            print(json.dumps({k: v for k, v in row.items() if k != "compress"} | {
                k: v for k, v in row["compress"].items() if k != "summary"}), file=sys.stderr, flush=True)
            rows.append(row)
    small.close()
    return emit(table(rows, args.time_limit, args.samples, base), args.out)


if __name__ == "__main__":
    from evonnx.tools.interrupt import entry_point
    raise SystemExit(entry_point(main))

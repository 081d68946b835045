"""Decode-speed benchmark for .evx files: MB/s of fp32 weights produced, on one core.

    python -m evonnx.tools.bench.decode_speed [--mb 256] [--scenario all] [--repeat 3]

Builds synthetic weights (2048 x 4096 float32 matrices, rows and columns of different scales) for
each scenario, encodes them once, then times (a) `read_evx` + `dequantize` of every tensor (the
weights; wall and CPU time) and (b) `evonnx.runtime.decode` (the whole ONNX model, wall time). The
process is pinned to one CPU and BLAS/OpenMP threads are set to 1. Not a test: numbers depend on
the machine.
"""
from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import onnx  # noqa: E402
from onnx import helper  # noqa: E402

from evonnx.formats import QuantizedTensor, dequantize, encode_evx, read_evx  # noqa: E402
from evonnx.runtime import decode  # noqa: E402

ROWS, COLS = 2048, 4096
SCENARIOS = ("sparse90-4bit", "sparse90-4bit-structured", "sparse50-6bit", "dense-8bit", "dense-4bit-perchannel",
             "codebook-5bit", "raw-fp32")


def _heteroscedastic(rng: np.random.Generator) -> np.ndarray:
    rs = np.exp(rng.normal(0, 0.5, (ROWS, 1)))
    cs = np.exp(rng.normal(0, 0.5, (1, COLS)))
    return (rng.normal(size=(ROWS, COLS)) * rs * cs).astype(np.float32)


def _grid(values: np.ndarray, bits: int) -> tuple[np.ndarray, np.float32, np.float32]:
    top = 2 ** bits - 1
    scale = np.float32(np.abs(values).max() * 2 / top)
    zp = np.float32(top / 2)
    return np.clip(np.rint(values / scale + zp), 0, top).astype(np.uint8), scale, zp


def make_tensor(scenario: str, name: str, rng: np.random.Generator) -> QuantizedTensor:
    shape = (ROWS, COLS)
    if scenario == "raw-fp32":
        return QuantizedTensor.raw(name, rng.normal(size=shape).astype(np.float32))
    w = _heteroscedastic(rng)
    if scenario.startswith("sparse"):
        sparsity = 0.9 if scenario.startswith("sparse90") else 0.5
        bits = 4 if "4bit" in scenario else 6
        if scenario.endswith("structured"):
            mask = np.repeat(rng.random((ROWS // 4, COLS)) < 1 - sparsity, 4, axis=0)
        else:
            mask = np.abs(w) > np.quantile(np.abs(w), sparsity)
        codes, scale, zp = _grid(w[mask], bits)
        return QuantizedTensor.uniform(name, shape, "float32", bits, codes, scale, zp, mask=mask)
    if scenario == "dense-8bit":
        codes, scale, zp = _grid(w.reshape(-1), 8)
        return QuantizedTensor.uniform(name, shape, "float32", 8, codes, scale, zp)
    if scenario == "dense-4bit-perchannel":
        scale = (np.abs(w).max(1) * 2 / 15).astype(np.float32)
        codes = np.clip(np.rint(w / scale[:, None] + 7.5), 0, 15).astype(np.uint8)
        return QuantizedTensor.uniform(name, shape, "float32", 4, codes.reshape(-1), scale,
                                       np.full(ROWS, 7.5, np.float32), axis=0)
    if scenario == "codebook-5bit":
        centroids = np.sort(rng.normal(size=32)).astype(np.float32)
        codes = np.clip(np.searchsorted(centroids, w.reshape(-1) / w.std()), 0, 31).astype(np.uint8)
        return QuantizedTensor.codebook(name, shape, "float32", 5, codes, centroids)
    raise ValueError(scenario)


def graph_for(tensors: list[QuantizedTensor]) -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, ROWS])
    nodes, prev = [], "x"
    for i, t in enumerate(tensors):  # x @ W_i @ W_i^T ... keeps shapes valid: (1,R)->(1,C)->(1,R)
        nodes.append(helper.make_node("MatMul", [prev, t.name], [f"h{i}"]))
        nodes.append(helper.make_node("MatMul", [f"h{i}", f"{t.name}_T"], [f"g{i}"]))
        nodes.append(helper.make_node("Transpose", [t.name], [f"{t.name}_T"]))
        prev = f"g{i}"
    nodes = [n for n in nodes if n.op_type == "Transpose"] + [n for n in nodes if n.op_type != "Transpose"]
    y = helper.make_tensor_value_info(prev, onnx.TensorProto.FLOAT, [1, ROWS])
    model = helper.make_model(helper.make_graph(nodes, "bench", [x], [y]),
                              opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 10
    return model


def bench(scenario: str, megabytes: int, repeat: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    count = max(1, round(megabytes * 2 ** 20 / (ROWS * COLS * 4)))
    tensors = [make_tensor(scenario, f"w{i}", rng) for i in range(count)]
    t0 = time.perf_counter()
    blob = encode_evx(graph_for(tensors), tensors, {"bench": scenario})
    encode_s = time.perf_counter() - t0
    produced = sum(t.size for t in tensors) * 4
    weights_s, weights_cpu, model_s = [], [], []
    for _ in range(repeat):
        t0, c0 = time.perf_counter(), time.process_time()
        c = read_evx(blob)
        ws = [dequantize(t) for t in c.tensors]
        weights_s.append(time.perf_counter() - t0)
        weights_cpu.append(time.process_time() - c0)
        del ws, c
        t0 = time.perf_counter()
        m = decode(blob)
        model_s.append(time.perf_counter() - t0)
        del m
    mb = produced / 1e6
    return {"scenario": scenario, "fp32_MB": round(mb, 1), "container_MB": round(len(blob) / 1e6, 2),
            "ratio": round(produced / len(blob), 2), "encode_s": round(encode_s, 2),
            "weights_MBps_median": round(mb / statistics.median(weights_s), 1),
            "weights_MBps_best": round(mb / min(weights_s), 1),
            "weights_cpu_MBps_median": round(mb / statistics.median(weights_cpu), 1),
            "model_MBps_median": round(mb / statistics.median(model_s), 1),
            "model_MBps_best": round(mb / min(model_s), 1)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mb", type=int, default=256, help="fp32 megabytes of weights per scenario")
    p.add_argument("--scenario", default="all", choices=("all",) + SCENARIOS)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cpu", type=int, default=None, help="pin to this CPU (default: the first allowed one)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    if hasattr(os, "sched_setaffinity"):
        allowed = sorted(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {args.cpu if args.cpu is not None else allowed[0]})
    chosen = SCENARIOS if args.scenario == "all" else (args.scenario,)
    rows = [bench(s, args.mb, args.repeat, args.seed) for s in chosen]
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        for r in rows:
            print(f"{r['scenario']:26s} {r['fp32_MB']:8.1f} MB fp32 -> {r['container_MB']:7.2f} MB (x{r['ratio']:<6}) "
                  f"weights {r['weights_MBps_median']:7.1f} MB/s (best {r['weights_MBps_best']:.1f}, "
                  f"cpu {r['weights_cpu_MBps_median']:.1f})  "
                  f"model {r['model_MBps_median']:7.1f} MB/s (best {r['model_MBps_best']:.1f})  "
                  f"encode {r['encode_s']} s")
    return 0


if __name__ == "__main__":
    from evonnx.tools.interrupt import entry_point
    raise SystemExit(entry_point(main))

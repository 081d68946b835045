"""Quantization benchmark: bit allocation after sparsification vs ONNX Runtime int8 / 4-bit, in one run.

    python -m evonnx.tools.bench.quantization [--models lenet300 lenet5] [--sparsity 0.9]
        [--prune directed-evolution|magnitude] [--max-drop 0.5] [--out FILE.md]

Per model: the fp32 file; ORT `quantize_dynamic` (int8) and ORT 4-bit weight-only (MatMulNBitsQuantizer,
block 32, symmetric) on the dense model (and on a Gemm->MatMul rewrite, since it only takes MatMul);
our bit allocation on the dense model, and after sparsification (`--prune`, refit on). Sizes: the
estimate the search optimises (weights only) and the real .evx file (graph + records, formats/).
Accuracy is on the zoo's held-out test set; the allocation's budget is checked on calibration data.
"""
from __future__ import annotations

import argparse
import logging
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from evonnx.formats.container import encode_evx
from evonnx.passes.base import PassContext, get_pass
from evonnx.passes.bit_allocation import BitAllocation
from evonnx.passes.engine.calib import CalibData, load_npz
from evonnx.passes.quant.sizing import HEADER_BYTES
from evonnx.passes.state import ModelState, load_state
from evonnx.passes.compress.container import to_container

FAMILIES = BitAllocation.Config().schemes  # the pass's defaults: the benchmark measures what users get


def gemm_to_matmul(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    """Rewrite Gemm(x, W, b) with a constant W (alpha=beta=1, transA=0) as MatMul(x, W') + b."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    inits = {t.name: t for t in out.graph.initializer}
    nodes, count = [], 0
    for node in out.graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if node.op_type != "Gemm" or node.input[1] not in inits or attrs.get("transA", 0) \
                or attrs.get("alpha", 1.0) != 1.0 or attrs.get("beta", 1.0) != 1.0:
            nodes.append(node)
            continue
        w = numpy_helper.to_array(inits[node.input[1]])
        w = w.T if attrs.get("transB", 0) else w
        name = node.input[1] + "_matmul"
        out.graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(w), name))
        mm = node.output[0] + "_mm" if len(node.input) > 2 else node.output[0]
        nodes.append(helper.make_node("MatMul", [node.input[0], name], [mm], name=node.name + "_mm"))
        if len(node.input) > 2:
            nodes.append(helper.make_node("Add", [mm, node.input[2]], [node.output[0]], name=node.name + "_add"))
        count += 1
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    used = {i for n in out.graph.node for i in n.input}
    keep = [t for t in out.graph.initializer if t.name in used]
    del out.graph.initializer[:]
    out.graph.initializer.extend(keep)
    return out, count


def ort_rows(model_path: Path, test: CalibData) -> list[dict]:
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer
    from evonnx.tools.zoo.build import ort_predict, ort_session
    for name in ("", "onnxruntime.quantization", "onnxruntime.quantization.matmul_nbits_quantizer"):
        logging.getLogger(name).setLevel(logging.ERROR)  # ORT's quantizers log every node at INFO
    x, y = test.inputs["input"], test.labels
    def scored(path_or_model) -> dict:
        pred = ort_predict(ort_session(path_or_model), x).argmax(1)
        return {"acc": float(np.mean(pred == y)), "pred": pred}
    model = onnx.load(str(model_path))
    ops = [n.op_type for n in model.graph.node]
    rows = [{"method": "fp32 (ORT)", "bits": "32", "file": os.path.getsize(model_path), **scored(model_path)}]
    with tempfile.TemporaryDirectory() as tmp:
        int8 = Path(tmp) / "int8.onnx"
        quantize_dynamic(str(model_path), str(int8), weight_type=QuantType.QInt8)
        rows.append({"method": "ORT quantize_dynamic int8", "bits": "8 (all Gemm/MatMul/Conv)",
                     "file": os.path.getsize(int8), **scored(int8)})
        for label, source in (("ORT MatMulNBits 4-bit", model), ("ORT MatMulNBits 4-bit, Gemm->MatMul", None)):
            if source is None:
                source, n = gemm_to_matmul(model)
                note = f"{n} Gemm rewritten"
            else:
                note = f"{ops.count('MatMul')} MatMul"
            q = MatMulNBitsQuantizer(source, bits=4, block_size=32, is_symmetric=True)
            q.process()
            done = sum(n.op_type == "MatMulNBits" for n in q.model.model.graph.node)
            if done == 0:
                rows.append({"method": label, "bits": f"n/a: applies to MatMul only ({ops.count('Gemm')} Gemm, {note})",
                             "file": None, "acc": None})
                continue
            path = Path(tmp) / "nbits.onnx"
            onnx.save(q.model.model, str(path))
            convs = ops.count("Conv")
            bits = f"4 on {done} MatMul" + (f", {convs} Conv stay fp32" if convs else "")
            rows.append({"method": label, "bits": bits,
                         "file": os.path.getsize(path), **scored(path)})
    return rows


def evx_size(state: ModelState) -> int:
    """Bytes of the .evx file `evonnx compress` would write: graph + one record per float weight."""
    graph, records, _ = to_container(state)
    return len(encode_evx(graph, records))


def weights_estimate(state: ModelState, record: dict) -> float:
    fixed = sum(w.size * state.current(w.name).dtype.itemsize + HEADER_BYTES + len(w.name)
                for w in state.table if w.name not in state.quant)
    return record["est_bytes"] + fixed


def our_row(label: str, state: ModelState, out: ModelState, engine, test: CalibData, fp32: int, seconds: float) -> dict:
    record = out.history[-1]
    alloc = record.get("allocation") or {r["name"]: f"{r['scheme']}@{r['bits']}" for r in record["layers"]}
    bits = ", ".join(f"{n.split('.')[0]}:{_short(s)}" for n, s in alloc.items())
    acc = engine.accuracy(test, {n: out.current(n) for n in state.targets})
    return {"method": label, "bits": bits, "est": weights_estimate(out, record), "file": evx_size(out),
            "acc": acc, "fp32": fp32, "seconds": seconds, "record": record, "state": out}


def _short(spec: str) -> str:
    return (spec.replace("uniform/channel/sym", "u-ch-s").replace("uniform/channel/asym", "u-ch-a")
            .replace("uniform/tensor/sym", "u-t-s").replace("codebook+refit", "km+r").replace("codebook", "km"))


def bench_model(name: str, args) -> tuple[str, dict]:
    from evonnx.tools.zoo.build import build
    entry = build(name)
    base = load_state(entry.model_path, label=name)
    calib = load_npz(entry.calib_path, base.model)
    t = entry.load_test()
    test = CalibData({"input": t["input"]}, t["labels"], "test")
    workdir = args.workdir / name if args.workdir else None  # DE checkpoints: a rerun resumes its finished search
    ctx = PassContext(calib=calib, seed=0, progress=False, workdir=workdir)
    engine = ctx.engine(base)
    fp32 = os.path.getsize(entry.model_path)
    rows = ort_rows(entry.model_path, test)
    for r in rows:
        r["fp32"] = fp32

    def run(label, state, pass_name, **cfg):
        t0 = time.perf_counter()
        out = get_pass(pass_name)(**cfg).run(state, ctx)
        return our_row(label, state, out, engine, test, fp32, time.perf_counter() - t0)

    alloc_cfg = dict(max_drop=args.max_drop)
    rows.append(run(f"evonnx bit-allocation, dense, max_drop {args.max_drop}", base, "bit-allocation", **alloc_cfg))
    t0 = time.perf_counter()
    prune_cfg = {"sparsity": args.sparsity}
    if args.prune == "directed-evolution" and args.de_time_limit:
        prune_cfg.update(time_limit=args.de_time_limit, on_budget="finish")
    sparse = get_pass(args.prune)(**prune_cfg).run(base, ctx)
    prune_s = time.perf_counter() - t0
    sparse_acc = engine.accuracy(test, {n: sparse.current(n) for n in base.targets})
    rows.append({"method": f"{args.prune} {args.sparsity:.0%}, fp32 survivors", "bits": "32",
                 "est": None, "file": None, "acc": sparse_acc, "fp32": fp32, "seconds": prune_s})
    knap = run(f"{args.prune} {args.sparsity:.0%} + bit-allocation (knapsack)", sparse, "bit-allocation", **alloc_cfg)
    greedy = run(f"{args.prune} {args.sparsity:.0%} + bit-allocation (greedy)", sparse, "bit-allocation",
                 search="greedy", **alloc_cfg)
    raw_drop = run(f"{args.prune} {args.sparsity:.0%} + bit-allocation (knapsack, z=0: raw calibration drop)", sparse,
                   "bit-allocation", z=0.0, **alloc_cfg)
    fixed4 = run(f"{args.prune} {args.sparsity:.0%} + quantize uniform/channel/sym@4", sparse, "quantize",
                 scheme="uniform/channel/sym", bits=4)
    fixed3 = run(f"{args.prune} {args.sparsity:.0%} + quantize codebook@3", sparse, "quantize",
                 scheme="codebook", bits=3)
    rows += [knap, greedy, raw_drop, fixed4, fixed3]
    info = {"sparse": sparse, "knap": knap, "greedy": greedy, "raw_drop": raw_drop, "sparse_acc": sparse_acc,
            "teacher_acc": rows[0]["acc"], "prune_seconds": prune_s}
    return _render(name, rows, info, args), info


def _fmt_bytes(b):
    return "—" if b is None else f"{b / 1024:.1f} KiB"


def _render(name: str, rows: list[dict], info: dict, args) -> str:
    teacher = info["teacher_acc"]
    out = [f"### {name}", "",
           "| method | bits per layer | est. coded weights | file (.onnx / .evx) | ratio vs fp32 file | test acc. "
           "| Δ pt |",
           "|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        ratio = f"{r['fp32'] / r['file']:.1f}×" if r.get("file") else "—"
        acc = "—" if r["acc"] is None else f"{r['acc']:.4f}"
        delta = "—" if r["acc"] is None else f"{100 * (r['acc'] - teacher):+.2f}"
        out.append(f"| {r['method']} | {r['bits']} | {_fmt_bytes(r.get('est'))} | {_fmt_bytes(r.get('file'))} "
                   f"| {ratio} | {acc} | {delta} |")
    knap = info["knap"]
    rec = knap["record"]
    out += ["", f"Allocation found ({args.prune} {args.sparsity:.0%} + knapsack; budget: {rec['metric']} drop ≤ "
            f"{rec['limit']} pt on calibration vs the sparse model; measured {rec['joint_loss']:.2f} pt; "
            f"{rec['sensitivity_evaluations']} sensitivity + {rec['joint_evaluations']} joint evaluations, "
            f"{knap['seconds']:.1f} s):", "",
            "| layer | kept / size | scheme | bits | est. bytes | bits / weight | bits / survivor | rel. error "
            "| damage alone |",
            "|---|---:|---|---:|---:|---:|---:|---:|---:|"]
    for r in rec["layers"]:
        out.append(f"| {r['name']} | {r['kept']}/{r['size']} | {r['scheme']} | {r['bits']} | {r['est_bytes']:.0f} "
                   f"| {8 * r['est_bytes'] / r['size']:.3f} | {8 * r['est_bytes'] / max(r['kept'], 1):.2f} "
                   f"| {r['rel_error']:.4f} | {r['damage_alone']:.2e} |")
    out += ["", "Schemes, each layer quantized alone (ΔKL vs the sparse model on calibration / est. bytes):", "",
            "| layer | bits | " + " | ".join(FAMILIES) + " |", "|---|---:|" + "---:|" * len(FAMILIES)]
    for layer, meas in rec["sensitivity"].items():
        table = {label: (b, d) for label, b, d, _ in meas}
        for bits in (1, 2, 3, 4, 5, 6):
            cells = [table.get(f"{f}@{bits}") for f in FAMILIES]
            out.append(f"| {layer} | {bits} | " + " | ".join("—" if c is None else f"{c[1]:.2e} / {c[0]:.0f}"
                                                               for c in cells) + " |")
    g = info["greedy"]["record"]
    out += ["", f"Search: knapsack {_fmt_bytes(knap['est'])} with {rec['joint_evaluations']} joint evaluations "
            f"(test acc. {knap['acc']:.4f}); greedy {_fmt_bytes(info['greedy']['est'])} with "
            f"{g['joint_evaluations']} (test acc. {info['greedy']['acc']:.4f}); knapsack on the raw calibration drop "
            f"(z=0) {_fmt_bytes(info['raw_drop']['est'])}, test acc. {info['raw_drop']['acc']:.4f}. Pruning took "
            f"{info['prune_seconds']:.0f} s; sparse fp32 test acc. {info['sparse_acc']:.4f}.", ""]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["lenet300", "lenet5"])
    parser.add_argument("--sparsity", type=float, default=0.9)
    parser.add_argument("--prune", default="directed-evolution", choices=["directed-evolution", "magnitude"])
    parser.add_argument("--de-time-limit", type=float, default=0.0, help="seconds for DE, then finish by its prior")
    parser.add_argument("--max-drop", type=float, default=0.5, help="accuracy points (calibration) for the allocation")
    parser.add_argument("--workdir", type=Path, default=Path.home() / ".cache" / "evonnx" / "bench-quantization")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    import onnxruntime
    command = " ".join(sys.argv[1:] if argv is None else argv)
    parts = ["# Quantization benchmark", "",
             f"`python -m evonnx.tools.bench.quantization {command}`"
             f" — onnxruntime {onnxruntime.__version__}, CPU, {platform.machine()}, {os.cpu_count()} cores.", ""]
    for name in args.models:
        text, _ = bench_model(name, args)
        print(text, flush=True)
        parts.append(text)
    if args.out:
        args.out.write_text("\n".join(parts) + "\n")
    return 0


if __name__ == "__main__":
    from evonnx.tools.interrupt import entry_point
    raise SystemExit(entry_point(main))

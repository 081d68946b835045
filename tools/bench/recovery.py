"""Benchmark gradient recovery: Directed Evolution alone vs DE + distill-finetune, then + bit-allocation.

    python -m evonnx.tools.bench.recovery --models lenet300 lenet5 --sparsities 0.9 0.95 0.97 --out recovery.md

For each (model, sparsity): DE (checkpointed in --workdir, so a rerun reuses it), then the pipelines
DE | DE+FT | DE+BA | DE+FT+BA | DE+FT+BA+FT (the last fine-tune on the quantized grid). Training and
searches use the zoo's calibration set only; accuracy is measured on the zoo's held-out test set.
Size = len(encode_evx(*to_container(state))) against the fp32 model file.
"""
from __future__ import annotations

import argparse
import ast
import json
import time
from pathlib import Path

import numpy as np

from evonnx.formats.container import encode_evx
from evonnx.passes.base import PassContext, get_pass
from evonnx.passes.engine.calib import load_npz
from evonnx.passes.state import load_state
from evonnx.tools.bench.sparsity import logits
from evonnx.tools.compress import to_container

PIPELINES = {"de": [], "de+ft": ["ft"], "de+ba": ["ba"], "de+ft+ba": ["ft", "ba"], "de+ft+ba+ft": ["ft", "ba", "qft"]}


def container_bytes(state) -> int:
    graph, records, _ = to_container(state)
    return len(encode_evx(graph, records, {}))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["lenet300", "lenet5"])
    parser.add_argument("--sparsities", nargs="+", type=float, default=[0.9, 0.95])
    parser.add_argument("--pipelines", nargs="+", default=list(PIPELINES), choices=list(PIPELINES))
    parser.add_argument("--de", nargs="*", default=[], metavar="KEY=VALUE", help="directed-evolution overrides")
    parser.add_argument("--ft", nargs="*", default=[], metavar="KEY=VALUE", help="distill-finetune overrides")
    parser.add_argument("--qft", nargs="*", default=[], metavar="KEY=VALUE", help="overrides of the fine-tune "
                        "after the bit allocation (default: those of --ft)")
    parser.add_argument("--ba", nargs="*", default=[], metavar="KEY=VALUE", help="bit-allocation overrides")
    parser.add_argument("--workdir", type=Path, default=Path.home() / ".cache" / "evonnx" / "bench-recovery")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--out", type=Path, help="markdown table here, rows as .json beside it")
    args = parser.parse_args(argv)
    import torch

    from evonnx.tools.zoo.build import build
    torch.set_num_threads(args.threads)
    kv = lambda items: {k: ast.literal_eval(v) for k, v in (i.split("=", 1) for i in items)}  # noqa: E731
    opts = {"de": kv(args.de), "ft": kv(args.ft), "ba": {"max_drop": 0.5, **kv(args.ba)}}
    opts["qft"] = {**opts["ft"], **kv(args.qft)}
    names = {"ft": "distill-finetune", "qft": "distill-finetune", "ba": "bit-allocation"}
    rows, dense = [], {}
    for model in args.models:
        entry = build(model)
        state = load_state(str(entry.model_path))
        calib = load_npz(entry.calib_path, state.model)
        test = entry.load_test()
        inputs = {k: v for k, v in test.items() if k != "labels"}
        acc = lambda s: float(np.mean(logits(s.to_onnx(), inputs).argmax(1) == test["labels"]))  # noqa: E731
        dense[model] = acc(state)
        fp32 = entry.model_path.stat().st_size
        for sparsity in args.sparsities:
            work = args.workdir / model / f"s{sparsity:g}"
            ctx = PassContext(calib, device="cpu", seed=args.seed, workdir=work, progress=False, log=lambda _: None)
            t0 = time.perf_counter()
            de = get_pass("directed-evolution")(sparsity=sparsity, **opts["de"]).run(state, ctx)
            de_s = time.perf_counter() - t0
            cache = {(): (de, de_s)}
            for pipe in args.pipelines:
                steps = PIPELINES[pipe]
                for i in range(1, len(steps) + 1):  # reuse shared prefixes (DE+FT is the start of DE+FT+BA)
                    key = tuple(steps[:i])
                    if key not in cache:
                        prev, secs = cache[key[:-1]]
                        step_ctx = PassContext(calib, device="cpu", seed=args.seed, progress=False, log=lambda _: None,
                                               workdir=work / "-".join(key))
                        t0 = time.perf_counter()
                        out = get_pass(names[key[-1]])(**opts[key[-1]]).run(prev, step_ctx)
                        cache[key] = (out, secs + time.perf_counter() - t0)
                out, secs = cache[tuple(steps)]
                size = container_bytes(out)
                row = {"model": model, "sparsity": sparsity, "pipeline": pipe, "accuracy": acc(out),
                       "dense": dense[model], "bytes": size, "ratio": fp32 / size, "seconds": secs,
                       "real_sparsity": out.global_sparsity()}
                row["drop_pt"] = 100 * (dense[model] - row["accuracy"])
                rows.append(row)
                print(json.dumps(row), flush=True)
    ft = get_pass("distill-finetune")(**opts["ft"]).config
    settings = (f"DE {opts['de'] or 'defaults'}; FT steps={ft.steps} lr={ft.lr} batch={ft.batch_size} "
                f"T={ft.temperature} augment={ft.augment} label_weight={ft.label_weight}; after BA: "
                f"{kv(args.qft) or 'same'}; BA {opts['ba']}")
    text = table(rows, dense, settings)
    print(text)
    if args.out:
        args.out.write_text(text)
        args.out.with_suffix(".json").write_text(json.dumps({"dense": dense, "rows": rows}, indent=1))
    return 0


def table(rows: list[dict], dense: dict[str, float], settings: str) -> str:
    lines = ["| model | sparsity | pipeline | test acc | Δ pt vs dense | .evx bytes | ratio vs fp32 file | ≥100× & ≤0.5 pt "
             "| cumulative s |", "|---|---|---|---:|---:|---:|---:|---|---:|"]
    for r in rows:
        ok = "**yes**" if r["ratio"] >= 100 and r["drop_pt"] <= 0.5 else "no"
        lines.append(f"| {r['model']} | {r['sparsity']:.2f} | {r['pipeline']} | {r['accuracy']:.4f} | "
                     f"{-r['drop_pt']:+.2f} | {r['bytes']} | {r['ratio']:.1f}× | {ok} | {r['seconds']:.0f} |")
    dense_line = ", ".join(f"{m}: {a:.4f}" for m, a in dense.items())
    return "\n".join(lines) + f"\n\nDense test accuracy: {dense_line}. Settings: {settings}.\n"


if __name__ == "__main__":
    raise SystemExit(main())

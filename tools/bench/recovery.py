"""Benchmark gradient recovery: DE alone, DE + distill-finetune, DE + fine-tune + Weight Evolution, IMP.

    python -m evonnx.tools.bench.recovery --models lenet300 lenet5 --sparsities 0.9 0.95 0.97 --out recovery.md

For each (model, sparsity) the pipelines of PIPELINES run, sharing prefixes (DE and IMP checkpoint in
--workdir, so a rerun reuses them). `ft` alone fine-tunes the dense model the same way: the control for how
much of a recovery comes from training longer than the zoo's teacher was trained (run it with `--ft
keep_best=False`: validation keeps the step closest to the teacher, which for the teacher itself is step 0).
`ba` is dead-units then bit-allocation, `qft` a fine-tune on the quantized grid afterwards. Searches use the
zoo's calibration set; fine-tuning trains on the zoo's train split less the calibration samples (`--data train`,
written by `evonnx zoo build NAME --train-split`) or the calibration set (`--data calib`) and validates on the
calibration set; accuracy is measured on the held-out test set.
Size: the container as `evonnx compress` would write it for the same passes (metadata included), against the
fp32 model file.
"""
from __future__ import annotations

import argparse
import ast
import json
import os
import time
from pathlib import Path

import numpy as np

from evonnx.formats.container import encode_evx
from evonnx.passes.base import PassContext, get_pass
from evonnx.passes.engine.calib import load_npz
from evonnx.passes.engine.fitness import THREADS_ENV
from evonnx.passes.pipeline import Pipeline
from evonnx.passes.state import load_state
from evonnx.tools.bench import paired_se
from evonnx.tools.bench.sparsity import logits
from evonnx.passes.compress.container import describe, run_meta, to_container

PIPELINES = {"ft": ["ft"], "de": ["de"], "de+ba": ["de", "ba"], "de+ft": ["de", "ft"], "de+ft+ba": ["de", "ft", "ba"],
             "de+ft+ba+qft": ["de", "ft", "ba", "qft"],
             "de+we": ["de", "we"], "de+we+ba+qft": ["de", "we", "ba", "qft"],
             "imp": ["imp"], "imp+ba+qft": ["imp", "ba", "qft"]}
PASSES = {"de": "directed-evolution", "imp": "iterative-magnitude", "ft": "distill-finetune",
          "we": "distill-finetune", "qft": "distill-finetune", "ba": "bit-allocation"}


def container_bytes(state, meta: dict, save: Path | None = None) -> int:
    """Size of the state's container with `meta`; written to `save` too when given."""
    graph, records, _ = to_container(state)
    blob = encode_evx(graph, records, meta)
    if save:
        save.parent.mkdir(parents=True, exist_ok=True)
        save.write_bytes(blob)
    return len(blob)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["lenet300", "lenet5"])
    parser.add_argument("--sparsities", nargs="+", type=float, default=[0.9, 0.95, 0.97])
    parser.add_argument("--pipelines", nargs="+", default=["de", "de+ba", "de+ft+ba+qft", "de+we+ba+qft",
                                                           "imp+ba+qft"], choices=list(PIPELINES))
    parser.add_argument("--data", choices=("train", "calib"), default="train", help="what fine-tuning trains on")
    for key, what in [("de", "directed-evolution"), ("ft", "distill-finetune"), ("we", "the Weight Evolution "
                      "fine-tune (default: --ft with weight_evolution=True, we_layers='all')"),
                      ("qft", "the fine-tune after bit-allocation (default: --ft)"), ("ba", "bit-allocation"),
                      ("imp", "iterative-magnitude (default finetune: --ft, split over the rounds)")]:
        parser.add_argument(f"--{key}", nargs="*", default=[], metavar="KEY=VALUE", help=f"{what} overrides")
    parser.add_argument("--workdir", type=Path, default=Path.home() / ".cache" / "evonnx" / "bench-recovery")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2, help="torch threads, and ONNX Runtime's unless "
                        "EVONNX_ORT_THREADS is set")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="torch training and ONNX Runtime searches (auto: CUDA where it works)")
    parser.add_argument("--out", type=Path, help="markdown table here, rows as .json beside it")
    parser.add_argument("--save", type=Path, help="write each row's container here (MODEL-SPARSITY-PIPELINE.evx)")
    args = parser.parse_args(argv)
    import torch

    from evonnx.tools.zoo.build import build, train_split
    torch.set_num_threads(args.threads)
    os.environ.setdefault(THREADS_ENV, str(args.threads))
    kv = lambda items: {k: ast.literal_eval(v) for k, v in (i.split("=", 1) for i in items)}  # noqa: E731
    rows, dense, opts = [], {}, {}
    for model in args.models:
        entry = build(model)
        state = load_state(str(entry.model_path))
        calib = load_npz(entry.calib_path, state.model)
        test = entry.load_test()
        inputs = {k: v for k, v in test.items() if k != "labels"}
        predict = lambda s: logits(s.to_onnx(), inputs).argmax(1)  # noqa: E731
        reference = predict(state)
        dense[model] = float(np.mean(reference == test["labels"]))
        fp32 = entry.model_path.stat().st_size
        ft = {**({"data": str(train_split(entry))} if args.data == "train" else {}), **kv(args.ft)}
        imp = kv(args.imp)
        rounds = imp.get("rounds", 5)
        opts = {"de": kv(args.de), "ft": ft, "we": {**ft, "weight_evolution": True, "we_layers": "all", **kv(args.we)},
                "qft": {**ft, **kv(args.qft)}, "ba": {"max_drop": 0.5, **kv(args.ba)},
                "imp": {"rounds": rounds, "finetune": {**ft, "steps": max(ft.get("steps", 1000) // rounds, 1)}, **imp}}
        for sparsity in args.sparsities:
            work = args.workdir / model / f"s{sparsity:g}"
            cache: dict[tuple, tuple] = {}

            def step(k: str, sparsity: float = sparsity) -> list[tuple[str, dict]]:
                """(pass name, configuration) of each pass of the pipeline step `k` (dead units go before bits)."""
                return [("dead-units", {})] * (k == "ba") + \
                    [(PASSES[k], {**({"sparsity": sparsity} if k in ("de", "imp") else {}), **opts[k]})]

            for pipe in args.pipelines:
                steps = PIPELINES[pipe]
                for i in range(1, len(steps) + 1):  # reuse shared prefixes (DE is the start of DE+FT+BA)
                    key = tuple(steps[:i])
                    if key in cache:
                        continue
                    prev, secs = cache[key[:-1]] if i > 1 else (state, 0.0)
                    folder = work / "-".join(key) if i > 1 else work
                    step_ctx = PassContext(calib, device=args.device, seed=args.seed, progress=False,
                                           workdir=folder)
                    t0, out = time.perf_counter(), prev
                    for name, config in step(key[-1]):
                        out = get_pass(name)(**config).run(out, step_ctx)
                    cache[key] = (out, secs + time.perf_counter() - t0)
                out, secs = cache[tuple(steps)]
                passes = Pipeline([s for k in steps for s in step(k)])
                meta = run_meta(entry.model_path.name, args.seed, describe(passes))
                size = container_bytes(out, meta, args.save and args.save / f"{model}-{sparsity:g}-{pipe}.evx")
                pred = predict(out)
                row = {"model": model, "sparsity": sparsity, "pipeline": pipe,
                       "accuracy": float(np.mean(pred == test["labels"])),
                       "se_pt": paired_se(reference, pred, test["labels"]),
                       "dense": dense[model], "bytes": size, "ratio": fp32 / size, "seconds": secs,
                       "real_sparsity": out.global_sparsity(),
                       "torch_device": next((r["torch_device"] for r in out.history if "torch_device" in r), None)}
                row["drop_pt"] = 100 * (dense[model] - row["accuracy"])
                rows.append(row)
                print(json.dumps(row), flush=True)
    shown = {k: {**v, **({"data": Path(v["data"]).name} if "data" in v else {})} for k, v in opts.items()}
    settings = f"{args.data} split (less the calibration set) for fine-tuning; options {json.dumps(shown)}"
    text = table(rows, dense, settings)
    print(text)
    if args.out:
        args.out.write_text(text)
        args.out.with_suffix(".json").write_text(json.dumps({"dense": dense, "rows": rows}, indent=1))
    return 0


def table(rows: list[dict], dense: dict[str, float], settings: str) -> str:
    lines = ["| model | sparsity | pipeline | test acc | Δ pt vs dense | ± s.e. | .evx bytes | ratio vs fp32 file "
             "| ≥100× & ≤0.5 pt | cumulative s |", "|---|---|---|---:|---:|---:|---:|---:|---|---:|"]
    for r in rows:
        ok = "**yes**" if r["ratio"] >= 100 and r["drop_pt"] <= 0.5 else "no"
        lines.append(f"| {r['model']} | {r['sparsity']:.2f} | {r['pipeline']} | {r['accuracy']:.4f} | "
                     f"{-r['drop_pt']:+.2f} | {r['se_pt']:.2f} | {r['bytes']} | {r['ratio']:.1f}× | {ok} | "
                     f"{r['seconds']:.0f} |")
    dense_line = ", ".join(f"{m}: {a:.4f}" for m, a in dense.items())
    return "\n".join(lines) + f"\n\nDense test accuracy: {dense_line}. Settings: {settings}.\n"


if __name__ == "__main__":
    from evonnx.tools.interrupt import entry_point
    raise SystemExit(entry_point(main))

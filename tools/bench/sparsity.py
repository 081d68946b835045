"""Benchmark the sparsification passes on zoo models: held-out test accuracy, KL to the teacher, time, evaluations.

    python -m evonnx.tools.bench.sparsity --models lenet300 lenet5 --sparsities 0.8 0.9 0.95 --out bench.md
    python -m evonnx.tools.bench.sparsity --models lenet300 --sparsities 0.95 --refit yes --ablation --seeds 0 1

Each (model, sparsity, method, re-fit) runs the pass on the zoo's calibration set and is scored on the
zoo's test set, never on the calibration set.
"""
from __future__ import annotations

import argparse
import ast
import json
import time
from pathlib import Path

import numpy as np

from evonnx.passes.base import PassContext, get_pass
from evonnx.passes.engine.calib import load_npz
from evonnx.passes.engine.fitness import Runner
from evonnx.passes.engine.metrics import kl_divergence
from evonnx.passes.state import load_state

METHODS = {"de": "directed-evolution", "magnitude": "magnitude", "random": "random"}
ABLATION = {  # --ablation: Directed Evolution with one setting changed from the defaults
    "defaults": {}, "prior magnitude only": {"priors": ["magnitude"]}, "prior wanda only": {"priors": ["wanda"]},
    "prior hessian only": {"priors": ["hessian"]}, "no survival credit": {"credit": 0.0},
    "population 8": {"population": 8}, "population 32": {"population": 32}, "generations 3": {"generations": 3},
    "steps 4": {"steps": 4}, "steps 16": {"steps": 16}, "nest magnitude": {"nest": "magnitude"},
    "nest hessian": {"nest": "hessian"}, "plain (not ReLU-aware) re-fit": {"refit_relu": False},
}


def logits(model, inputs: dict[str, np.ndarray], batch: int = 1000) -> np.ndarray:
    runner = Runner(model, ["CPUExecutionProvider"])
    n = len(next(iter(inputs.values())))
    return np.concatenate([runner.run({k: v[i:i + batch] for k, v in inputs.items()})[0] for i in range(0, n, batch)])


def run_one(entry, state, calib, test, teacher, method: str, sparsity: float, refit: bool, seed: int,
            overrides: dict) -> dict:
    ctx = PassContext(calib, device="cpu", seed=seed, progress=False)
    config = {"sparsity": sparsity, "refit": refit, **(overrides if method == "de" else {})}
    t0 = time.perf_counter()
    out = get_pass(METHODS[method])(**config).run(state, ctx)
    wall = time.perf_counter() - t0
    rec = out.history[-1]
    student = logits(out.to_onnx(), {k: v for k, v in test.items() if k != "labels"})
    return {"model": entry.name, "sparsity": sparsity, "method": method, "refit": refit,
            "accuracy": float(np.mean(student.argmax(1) == test["labels"])), "kl_test": kl_divergence(teacher, student),
            "fitness_calib": rec["fitness"], "wall_s": wall, "evaluations": rec["evaluations"],
            "evals_per_s": rec.get("evaluations_per_second"), "cost_ratio": rec.get("cost_ratio"),
            "stop": rec["stop_reason"], "layer_sparsity": rec["layer_sparsity"]}


def table(rows: list[dict], dense: dict[str, float]) -> str:
    head = ("| model | sparsity | method | seed | refit | test acc | Δ vs dense | KL(test) | wall s | evals | evals/s "
            "| cost/fwd |\n|---|---|---|---|---|---|---|---|---|---|---|---|")
    lines = [head]
    for r in rows:
        fmt = lambda v, f: "–" if v is None else format(v, f)  # noqa: E731
        refit = "yes" if r["refit"] else "no"
        lines.append(f"| {r['model']} | {r['sparsity']:.2f} | {r['method']} | {r['seed']} | {refit} | "
                     f"{r['accuracy']:.4f} | {r['accuracy'] - dense[r['model']]:+.4f} | {r['kl_test']:.4f} | "
                     f"{r['wall_s']:.1f} | {r['evaluations']} | {fmt(r['evals_per_s'], '.0f')} | "
                     f"{fmt(r['cost_ratio'], '.2f')} |")
    dense_line = ", ".join(f"{m}: {a:.4f}" for m, a in dense.items())
    return "\n".join(lines) + f"\n\nDense test accuracy (same ONNX model, same test set): {dense_line}\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["lenet300", "lenet5"])
    parser.add_argument("--sparsities", nargs="+", type=float, default=[0.8, 0.9, 0.95])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--refit", nargs="+", default=["no", "yes"], choices=["no", "yes"])
    parser.add_argument("--de", nargs="*", default=[], metavar="KEY=VALUE", help="directed-evolution overrides")
    parser.add_argument("--ablation", action="store_true", help="DE variants (ABLATION) instead of --methods")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--out", type=Path, help="write the markdown table here (and rows as .json beside it)")
    args = parser.parse_args(argv)
    from evonnx.tools.zoo.build import build

    overrides = {k: ast.literal_eval(v) for k, v in (item.split("=", 1) for item in args.de)}
    rows, dense = [], {}
    for name in args.models:
        entry = build(name)
        state = load_state(str(entry.model_path))
        calib = load_npz(entry.calib_path, state.model)
        with np.load(entry.test_path, allow_pickle=False) as z:
            test = {k: z[k] for k in z.files}
        inputs = {k: v for k, v in test.items() if k != "labels"}
        teacher = logits(state.model, inputs)
        dense[name] = float(np.mean(teacher.argmax(1) == test["labels"]))
        for sparsity in args.sparsities:
            runs = ([(f"de: {label}", "de", {**overrides, **o}) for label, o in ABLATION.items()] if args.ablation
                    else [(m, m, overrides) for m in args.methods])
            for refit in args.refit:
                for label, method, config in runs:
                    for seed in args.seeds:
                        row = run_one(entry, state, calib, test, teacher, method, sparsity, refit == "yes", seed,
                                      config)
                        rows.append({**row, "method": label, "seed": seed})
                        print(json.dumps({k: v for k, v in rows[-1].items() if k != "layer_sparsity"}), flush=True)
    text = table(rows, dense)
    print(text)
    if args.out:
        args.out.write_text(text)
        args.out.with_suffix(".json").write_text(json.dumps({"dense": dense, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    from evonnx.tools.interrupt import entry_point
    raise SystemExit(entry_point(main))

"""Budget honesty: does the drop `compress` promises hold on data no pass saw?

    python -m evonnx.tools.bench.budget [--models lenet300 lenet5] [--budgets 0.25 0.5 1] [--seeds 0 1 2]
        [--time-limits 30 120] [--calib-samples 3000] [--holdout 0.5] [--jsonl RUNS.jsonl] [--out FILE.md]

For each zoo model, budget (accuracy points), seed and time limit, the default budget-driven `compress` runs
on calibration samples from the FashionMNIST train split (labelled), and the decoded model is measured on
the 10,000-image test set, which no pass sees. A run is honest when its test drop is within the budget (or
it refused with exit code 3). Beside them, the former fixed default (90 % sparsity, bits within 0.5 points,
no budget check) at the smallest time limit. Runs append to --jsonl as they finish; --from-jsonl re-tables.
"""
from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from pathlib import Path

import numpy as np

from evonnx.errors import BudgetError
from evonnx.tools.bench import emit, paired_se

FIXED = "fixed 90 %"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m evonnx.tools.bench.budget", description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["lenet300", "lenet5"])
    p.add_argument("--budgets", nargs="+", type=float, default=[0.25, 0.5, 1.0])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--time-limits", nargs="+", type=float, default=[30.0, 120.0])
    p.add_argument("--calib-samples", type=int, default=3000, help="labelled samples from the train split")
    p.add_argument("--holdout", type=float, default=0.5, help="share of them held out for the budget check")
    p.add_argument("--no-fixed", action="store_true", help="skip the fixed-90 %% comparison runs")
    p.add_argument("--jsonl", help="append each run here as it finishes")
    p.add_argument("--from-jsonl", help="only tabulate the runs in this file")
    p.add_argument("--out")
    args = p.parse_args(argv)
    if args.from_jsonl:
        runs = [json.loads(line) for line in Path(args.from_jsonl).read_text().splitlines() if line.strip()]
        return emit(table(runs), args.out)
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            model, calib, test = _setup(name, args.calib_samples, Path(tmp))
            plan = [(b, s, t) for b in args.budgets for s in args.seeds for t in args.time_limits]
            if not args.no_fixed:
                plan += [(FIXED, s, min(args.time_limits)) for s in args.seeds]
            for budget, seed, limit in plan:
                run = one_run(name, model, calib, test, budget, seed, limit, args.holdout, Path(tmp))
                runs.append(run)
                print(json.dumps(run), flush=True)
                if args.jsonl:
                    with open(args.jsonl, "a") as f:
                        f.write(json.dumps(run) + "\n")
    return emit(table(runs), args.out)


def _setup(name: str, samples: int, tmp: Path):
    """The zoo model, a labelled calibration file of `samples` train images, and the test set."""
    from evonnx.tools.zoo import build
    from evonnx.tools.zoo.build import labelled_calibration

    entry = build(name)
    return entry.model_path, labelled_calibration(entry, samples, tmp / f"{name}-calib.npz"), entry.load_test()


def one_run(name, model, calib, test, budget, seed, limit, holdout, tmp: Path) -> dict:
    from evonnx.passes.compress import compress

    out = tmp / f"{name}-{seed}.evx"
    out.unlink(missing_ok=True)
    fixed = budget == FIXED
    options = ({"sparsity": 0.9, "max_drop": math.inf} if fixed else {"max_drop": budget})
    start = time.perf_counter()
    row = {"model": name, "budget": budget, "seed": seed, "time_limit": limit}
    try:
        result = compress(model, out, calib=calib, seed=seed, time_limit=limit, holdout=holdout, progress=False, **options)
    except BudgetError as exc:
        return {**row, "exit": 3, "seconds": round(time.perf_counter() - start, 1), "message": str(exc)}
    teacher, student = _test_predictions(model, out, test)
    y = test["labels"]
    drop = 100.0 * (np.mean(teacher == y) - np.mean(student == y))
    return {**row, "exit": 0, "seconds": round(result.seconds, 1), "ratio": round(result.ratio, 2),
            "sparsity": round(result.sparsity, 4), "shipped": result.shipped,
            "held_out": round(result.held_out["points"], 3), "held_out_upper": round(result.held_out["upper"], 3),
            "calibration": round(result.calibration["points"], 3), "test_drop": round(float(drop), 3),
            "test_se": round(paired_se(teacher, student, y), 3)}


def _test_predictions(model: Path, evx: Path, test: dict) -> tuple[np.ndarray, np.ndarray]:
    from evonnx.passes.engine.fitness import Runner
    from evonnx.passes.engine.providers import resolve
    from evonnx.runtime import decode
    import onnx

    preds = []
    for proto in (onnx.load(str(model)), decode(evx)):
        runner = Runner(proto, resolve("cpu"), "bench")
        preds.append(np.concatenate([runner.run({"input": test["input"][i:i + 2000]})[0].argmax(1)
                                     for i in range(0, len(test["input"]), 2000)]))
    return preds[0], preds[1]


def table(runs: list[dict]) -> str:
    """One row per model, budget and time limit: honest runs, ratio, held-out and test drops."""
    groups: dict[tuple, list[dict]] = {}
    for r in runs:
        groups.setdefault((r["model"], str(r["budget"]), r["time_limit"]), []).append(r)
    lines = ["| model | budget (points) | time limit (s) | runs | honest | exit 3 | ratio (geomean) | "
             "held-out drop (mean) | test drop (mean ± sd) | worst test drop - budget (test SEs) | seconds (mean) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for (model, budget, limit), rs in groups.items():
        done = [r for r in rs if r["exit"] == 0]
        cap = None if budget == FIXED else float(budget)
        honest = sum(1 for r in rs if r["exit"] == 3 or cap is None or r["test_drop"] <= cap)
        ratio = math.exp(np.mean([math.log(r["ratio"]) for r in done])) if done else float("nan")
        drops = [r["test_drop"] for r in done]
        worst = max(((r["test_drop"] - cap) / max(r["test_se"], 1e-9) for r in done), default=float("nan")) \
            if cap is not None else float("nan")
        lines.append(f"| {model} | {budget} | {limit:g} | {len(rs)} | {'-' if cap is None else honest} | "
                     f"{len(rs) - len(done)} | {ratio:.1f}x | "
                     f"{np.mean([r['held_out'] for r in done]) if done else float('nan'):.2f} | "
                     f"{np.mean(drops) if drops else float('nan'):.2f} ± {np.std(drops) if drops else 0:.2f} | "
                     f"{worst:+.2f} | {np.mean([r['seconds'] for r in rs]):.0f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    from evonnx.tools.interrupt import entry_point
    raise SystemExit(entry_point(main))

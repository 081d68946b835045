"""Do the ~100x recovery recipes reproduce? Mean and spread over seeds and zoo rebuilds, budget held out.

    python -m evonnx.tools.bench.recipes [--models lenet300 lenet5] [--seeds 0 1 2] [--zoo-seeds 0 1]
        [--calib-samples 3000] [--holdout 0.5] [--threads 2] [--workers N | --ray-address ADDR]
        [--jsonl RUNS.jsonl] [--out FILE.md]

Each zoo seed trains the model afresh (seed 0 is the zoo's own build; others build in a folder of their own).
Each run is `compress --config` with the peers bench's recovery recipe (Directed Evolution 97 %,
distill-finetune on the train split, dead units, bit allocation within 0.5 points, grid fine-tune) on
`--calib-samples` labelled train images, of which `--holdout` is held out for the budget check. The
distillation trains on the train split less every calibration image, so the held-out share stays unseen.
The budget is not enforced (the run reports its held-out drop and 95 % bound); the decoded model is then
measured on the 10,000-image test set. The table states, per model, the ratio and drops as mean ± sd, how
many runs are within 0.5 points on the test set, and how many the held-out check would have certified.
With `--workers` (or `--ray-address`), the zoo builds run here and the runs as Ray tasks of one CPU each, in
order (the `distributed` extra; the folders they read and write must be shared on a cluster).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from evonnx.tools.bench import cells, emit, keep_row, paired_se
from evonnx.tools.bench.budget import _test_predictions
from evonnx.tools.bench.peers import RECOVERY, recovery

BUDGET = 0.5  # points: what the recipe's bit allocation aims at, and the bar of the claim


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m evonnx.tools.bench.recipes", description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["lenet300", "lenet5"], choices=sorted(RECOVERY))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--zoo-seeds", nargs="+", type=int, default=[0, 1], help="zoo rebuilds (training seeds)")
    p.add_argument("--calib-samples", type=int, default=3000, help="labelled samples from the train split")
    p.add_argument("--holdout", type=float, default=0.5, help="share of them held out for the budget check")
    p.add_argument("--threads", type=int, default=2, help="torch and ONNX Runtime threads")
    p.add_argument("--workers", type=int, help="run the grid's runs as Ray tasks on this many local CPUs")
    p.add_argument("--ray-address", help="run them on this Ray cluster")
    p.add_argument("--jsonl", help="append each run here as it finishes")
    p.add_argument("--from-jsonl", nargs="+", help="only tabulate the runs in these files")
    p.add_argument("--out")
    args = p.parse_args(argv)
    if args.from_jsonl:
        runs = [json.loads(line) for f in args.from_jsonl for line in Path(f).read_text().splitlines() if line]
        return emit(table(runs), args.out)
    import torch

    from evonnx.passes.engine.fitness import THREADS_ENV
    torch.set_num_threads(args.threads)
    os.environ.setdefault(THREADS_ENV, str(args.threads))
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        grid = []
        for name in args.models:
            for zoo_seed in args.zoo_seeds:
                entry, calib, train = _setup(name, zoo_seed, args.calib_samples, Path(tmp))
                test = entry.load_test()
                grid += [(name, entry.model_path, calib, train, test, zoo_seed, seed, args.holdout, Path(tmp))
                         for seed in args.seeds]
        for run in cells(one_run, grid, args.workers, args.ray_address):
            runs.append(run)
            keep_row(run, args.jsonl)
    return emit(table(runs), args.out)


def _setup(name: str, zoo_seed: int, samples: int, tmp: Path):
    """The zoo entry trained with `zoo_seed`, a calibration file of `samples` labelled train images, and the
    train split less all of them (what the recipe distils on)."""
    from evonnx.tools.zoo import build
    from evonnx.tools.zoo.build import default_dir, labelled_calibration, train_split

    folder = default_dir(name) if zoo_seed == 0 else default_dir(name).with_name(f"{name}-zoo-seed{zoo_seed}")
    entry = build(name, folder, seed=zoo_seed)
    calib = labelled_calibration(entry, samples, tmp / f"{name}-{zoo_seed}-calib.npz")
    own = len(entry.load_calib()["labels"])
    train = tmp / f"{name}-{zoo_seed}-train.npz"
    with np.load(train_split(entry, zoo_seed), allow_pickle=False) as z:  # labelled_calibration took its head
        np.savez(train, input=z["input"][max(samples - own, 0):], labels=z["labels"][max(samples - own, 0):])
    return entry, calib, train


def one_run(name, model, calib, train, test, zoo_seed, seed, holdout, tmp: Path) -> dict:
    from evonnx.passes.compress import compress

    out = tmp / f"{name}-{zoo_seed}-{seed}.evx"
    start = time.perf_counter()
    result = compress(model, out, calib=calib, pipeline=recovery(str(train), 0.97, RECOVERY[name]), seed=seed,
                      max_drop=math.inf, holdout=holdout, progress=False)
    teacher, student = _test_predictions(model, out, test)
    y = test["labels"]
    return {"model": name, "zoo_seed": zoo_seed, "seed": seed, "ratio": round(result.ratio, 2),
            "bytes": result.container_bytes, "held_out": round(result.held_out["points"], 3),
            "held_out_upper": round(result.held_out["upper"], 3), "held_out_n": result.held_out["n"],
            "test_drop": round(100.0 * float(np.mean(teacher == y) - np.mean(student == y)), 3),
            "test_se": round(paired_se(teacher, student, y), 3), "seconds": round(time.perf_counter() - start, 1)}


def table(runs: list[dict]) -> str:
    """One row per model: ratio, held-out and test drops as mean ± sd, runs within 0.5 points."""
    lines = ["| model | runs (seeds × zoo builds) | ratio (mean ± sd) | held-out drop (mean ± sd) | "
             "test drop (mean ± sd) | worst test drop | test drop ≤ 0.5 | held-out bound ≤ 0.5 (certified) | "
             "certified and test drop > 0.5 | seconds (mean) |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for model in dict.fromkeys(r["model"] for r in runs):
        rs = [r for r in runs if r["model"] == model]
        col = lambda key: np.array([r[key] for r in rs], dtype=float)  # noqa: E731
        ms = lambda key: f"{col(key).mean():.2f} ± {col(key).std():.2f}"  # noqa: E731
        ok, cert = col("test_drop") <= BUDGET, col("held_out_upper") <= BUDGET
        builds = len({r["zoo_seed"] for r in rs})
        lines.append(f"| {model} | {len(rs)} ({len(rs) // max(builds, 1)} × {builds}) | {col('ratio').mean():.1f}× ± "
                     f"{col('ratio').std():.1f} | {ms('held_out')} | {ms('test_drop')} | {col('test_drop').max():.2f} | "
                     f"{ok.sum()}/{len(rs)} | {cert.sum()}/{len(rs)} | {(cert & ~ok).sum()} | "
                     f"{col('seconds').mean():.0f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    from evonnx.tools.interrupt import entry_point
    raise SystemExit(entry_point(main))

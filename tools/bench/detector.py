"""The detector headline: YOLOv8n at 90 % sparsity with 4-bit survivors, against the teacher's confident detections.

    python -m evonnx.tools.bench.detector [--runs fixed default recovery] [--calib 64] [--unseen 256]
        [--train 512] [--steps 200] [--batch-size 4] [--time-limit 300] [--save DIR] [--jsonl RUNS.jsonl]
        [--out FILE.md]
    python -m evonnx.tools.bench.detector --from-jsonl RUNS.jsonl [--out FILE.md]

The Directed Evolution paper's claim for YOLOv3 (90 % sparsity, 4-bit survivors, 40-80x) was that the compressed
network finds every object the original finds with more than 80 % confidence. Here the corpus detector (NudeNet's
YOLOv8n export, 320x320) is compressed on `--calib` corpus photos (seed 0; a quarter held out for the budget check):

- fixed: `--sparsity 0.9 --bits 4 --max-drop inf` (the paper's recipe; the drop is reported, not enforced);
- default: the budget-driven default at `--metric detection:yolov8:0.8 --max-drop 1`;
- recovery: `--config`: Directed Evolution 90 %, distill-finetune on `--train` unlabeled corpus photos (seed 2,
  `--steps` of `--batch-size`), dead units, 4 bits (drop reported, not enforced).

Each container is decoded and run on `--unseen` photos (seed 1) that no pass saw. The table counts the teacher's
detections above 0.8 (and 0.5) there and the share the decoded model reproduces (same class, IoU >= 0.5: the
detection metric of passes/engine/tasks.py, pooled over images), and the decoded model's own detections above
0.8 that the teacher lacks. Ratios are against the fp32 ONNX file.
"""
from __future__ import annotations

import argparse
import math
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

from evonnx.tools.bench import emit, keep_row, read_rows

MODEL = "yolov8n"
METRIC = "detection:yolov8:{conf:g}"
CONFS = (0.8, 0.5)
HELD_OUT_SEED, TRAIN_SEED = 1, 2
RUNS = ("fixed", "default", "recovery")
GOAL_RATIO, GOAL_SHARE = 40.0, 0.99


def recovery_pipeline(train: Path, steps: int, batch_size: int, search_seconds: float):
    """Directed Evolution 90 % (stopped after `search_seconds`, then finished one-shot), distillation on the
    unlabeled `train` photos, dead units cleared, 4 bits."""
    from evonnx.passes.pipeline import Pipeline
    return Pipeline([("directed-evolution", {"sparsity": 0.9, "time_limit": search_seconds, "on_budget": "finish"}),
                     ("distill-finetune", {"data": str(train), "steps": steps, "batch_size": batch_size,
                                           "eval_every": max(steps // 4, 1)}),
                     ("dead-units", {}), ("quantize", {"bits": 4, "measure_alone": False})])


def reproduced(conf: float, teacher: np.ndarray, student: np.ndarray) -> tuple[int, int]:
    """(the teacher's detections above `conf`, how many of them the student reproduces), pooled over images
    of sample-first [N, 4 + classes, anchors] tables."""
    from evonnx.passes.engine.tasks import Detection
    metric, found, kept = Detection("yolov8", conf), 0, 0
    for t, s in zip(teacher, student):
        losses, details = metric.losses([t[None]], [s[None]], None)
        n = details["teacher_detections"]
        found += n
        kept += round(n * (1 - losses[0] / 100))
    return found, kept


def detections(teacher: np.ndarray, student: np.ndarray) -> dict:
    """Per threshold: the teacher's detections, the share reproduced, and the student's own detections the
    teacher lacks."""
    out = {}
    for conf in CONFS:
        found, kept = reproduced(conf, teacher, student)
        own, matched = reproduced(conf, student, teacher)
        out[f"{conf:g}"] = {"teacher": found, "reproduced": kept, "extra": own - matched}
    return out


def outputs(model, images: np.ndarray, batch: int = 16) -> np.ndarray:
    """The first output of an ONNX model (path or proto) on `images`, in batches."""
    from evonnx.tools.bench.corpus import session
    sess = session(model)
    return np.concatenate([sess.run(None, {"images": images[i:i + batch]})[0] for i in range(0, len(images), batch)])


def one_run(run: str, args, calib: Path, train: Path, unseen: np.ndarray, teacher: np.ndarray, folder: Path) -> dict:
    from evonnx.passes.compress import compress
    from evonnx.runtime import decode
    from evonnx.tools.corpus.models import BY_NAME

    model = BY_NAME[MODEL].path()
    metric = METRIC.format(conf=CONFS[0])
    kwargs = {"fixed": {"sparsity": 0.9, "bits": 4, "max_drop": math.inf, "time_limit": args.time_limit},
              "default": {"max_drop": 1.0, "time_limit": args.time_limit},
              "recovery": {"pipeline": recovery_pipeline(train, args.steps, args.batch_size, args.time_limit / 2),
                           "max_drop": math.inf}}[run]
    out = folder / f"{MODEL}-{run}.evx"
    start = time.perf_counter()
    result = compress(model, out, calib=calib, metric=metric, seed=0, progress=False, device="cpu",
                      **kwargs)
    seconds = time.perf_counter() - start
    bits = sorted({r["bits"] for r in result.layers if r["role"] in ("conv", "matrix", "embedding")})
    distill = next((h for h in result.history if h.get("pass") == "distill-finetune"), {})
    return {"run": run, "ratio": result.ratio, "bytes": result.container_bytes, "sparsity": result.sparsity,
            "bits": bits, "seconds": seconds, "held_out": result.held_out, "shipped": result.shipped,
            "steps": distill.get("steps"), "detections": detections(teacher, outputs(decode(out), unseen))}


def _share(d: dict) -> str:
    return f"{d['reproduced'] / d['teacher']:.1%} ({d['reproduced']})" if d["teacher"] else "–"


def table(rows: list[dict]) -> str:
    lines = ["| run | ratio | sparsity | bits | teacher detections > 0.8 | reproduced | new > 0.8 | "
             "teacher detections > 0.5 | reproduced | held-out drop (pts, 95 % bound) | seconds |",
             "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        hi, lo = r["detections"]["0.8"], r["detections"]["0.5"]
        bits = "/".join(str(b) for b in r["bits"]) or "–"
        run = r["run"] + (f" ({r['steps']} steps)" if r.get("steps") else "")
        lines.append(f"| {run} | {r['ratio']:.1f}× | {r['sparsity']:.1%} | {bits} | {hi['teacher']} | {_share(hi)} | "
                     f"{hi['extra']} | {lo['teacher']} | {_share(lo)} | {r['held_out']['points']:.2f} "
                     f"({r['held_out']['upper']:.2f}) | {r['seconds']:.0f} |")
    met = [r["run"] for r in rows if r["ratio"] >= GOAL_RATIO and r["detections"]["0.8"]["teacher"]
           and r["detections"]["0.8"]["reproduced"] >= GOAL_SHARE * r["detections"]["0.8"]["teacher"]]
    goal = f"Goal: >= {GOAL_RATIO:g}x with >= {GOAL_SHARE:.0%} of the teacher's detections above 0.8 reproduced"
    return "\n".join(lines) + f"\n\n{goal}: {', '.join(met) if met else 'met by no run'}.\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m evonnx.tools.bench.detector", description=__doc__.splitlines()[0])
    p.add_argument("--runs", nargs="+", choices=RUNS, default=list(RUNS))
    p.add_argument("--calib", type=int, default=64, help="calibration photos (seed 0), a quarter held out")
    p.add_argument("--unseen", type=int, default=256, help="photos (seed 1) the decoded models are measured on")
    p.add_argument("--train", type=int, default=512, help="unlabeled photos (seed 2) the recovery run distils on")
    p.add_argument("--steps", type=int, default=200, help="distillation steps of the recovery run")
    p.add_argument("--batch-size", type=int, default=4, help="photos per distillation step")
    p.add_argument("--time-limit", type=float, default=300.0, help="seconds for the fixed and default runs; "
                   "the recovery run's search gets half")
    p.add_argument("--threads", type=int, default=2, help="torch and ONNX Runtime threads")
    p.add_argument("--save", type=Path, help="keep each run's container in this folder (MODEL-RUN.evx)")
    p.add_argument("--jsonl", help="append each run here as it finishes")
    p.add_argument("--from-jsonl", nargs="+", help="only tabulate the runs in these files")
    p.add_argument("--out")
    args = p.parse_args(argv)
    if args.from_jsonl:
        return emit(table(read_rows(args.from_jsonl)), args.out)
    import torch

    from evonnx.passes.engine.fitness import THREADS_ENV
    from evonnx.tools.corpus.models import BY_NAME
    torch.set_num_threads(args.threads)
    os.environ.setdefault(THREADS_ENV, str(args.threads))
    entry = BY_NAME[MODEL]
    calib = entry.calib_path(args.calib)
    unseen = np.load(entry.calib_path(args.unseen, HELD_OUT_SEED))["images"]
    teacher = outputs(entry.path(), unseen)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        train = entry.calib_path(args.train, TRAIN_SEED) if "recovery" in args.runs else Path(tmp)
        for run in args.runs:
            row = {**one_run(run, args, calib, train, unseen, teacher, args.save or Path(tmp)),
                   "machine": f"{platform.machine()}, {os.cpu_count()} cores", "calib": args.calib,
                   "unseen": args.unseen}
            rows.append(row)
            keep_row(row, args.jsonl)
    return emit(table(rows), args.out)


if __name__ == "__main__":
    raise SystemExit(main())

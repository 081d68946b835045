"""Transformers without training: a sentence encoder and a ViT against the teacher's pooled outputs and neighbours.

    python -m evonnx.tools.bench.embedding [--models minilm-l3 vit-focus] [--calib N] [--unseen 128]
        [--time-limit 600] [--max-drop 1] [--size 15x [--distill STEPS] [--train N]] [--save DIR]
        [--jsonl RUNS.jsonl] [--out FILE.md]
    python -m evonnx.tools.bench.embedding --from-jsonl RUNS.jsonl [--out FILE.md]

Each corpus model is compressed on its corpus calibration set (seed 0, a quarter held out for the budget check)
by the budget-driven default at `--metric cosine --max-drop 1`: the lowest output's mean cosine to the teacher at
least 0.99 at the held-out 95 % bound (`--metric cosine:mean`: that of the outputs mean-pooled over real tokens,
the budget stated on the quantity the pooled cosine below measures). The container is decoded and run on
`--unseen` inputs (seed 1) that no pass saw, each alone (drawn from the same pool as the calibration set; an
input equal to a calibration input, as a sentence drawn twice, is left out, so "unseen" counts fewer):

- pooled cosine: per input, the cosine of the teacher's and the decoded model's pooled first output (token
  outputs [N, tokens, features]: the mean over the real tokens by the attention mask, as sentence-embedding
  models pool; others flattened); the mean and the worst;
- retrieval agreement: per input, its 5 nearest neighbours by pooled cosine among the other unseen inputs, for
  the teacher and for the decoded model: the mean share of the teacher's five the decoded model also ranks in
  its five, and the share of inputs whose five are the same.

`--size 15x` fixes the file's size instead of the budget: no pruning, the default pipeline's bit allocation
fitted to the size within `--time-limit`, the drop reported, not enforced. `--distill STEPS` runs the bit
allocation's full search instead (entropy-sized per-channel grids with GPTQ's rounding, at most 1000 joint
measurements; no time limit), then fine-tunes the student on that grid by distillation (distill-finetune,
batches of 16) on `--train` unlabeled inputs the corpus builds from a source its calibration and unseen sets
never draw on (for text: the standard library's docstrings, not the licence texts).

Issue goals: >= 10x at >= 0.99 cosine without training, >= 20x with distillation. Ratios are against the fp32
ONNX file.
"""
from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

from evonnx.tools.bench import emit, keep_row, read_rows

MODELS = ("minilm-l3", "minilm-l6-int8", "vit-focus")
HELD_OUT_SEED = 1
NEIGHBOURS = 5
GOAL_RATIO, GOAL_COSINE = 10.0, 0.99
SIZED_BITS = {"schemes": ["uniform/channel/rate+gptq"], "bits": [1, 2, 3, 4, 5, 6, 8], "max_joint": 1000}


def pooled(output: np.ndarray, tokens: np.ndarray | None) -> np.ndarray:
    """[N, D]: a sample-first output mean-pooled over its real tokens (an output [N, tokens, features] with
    `tokens` [N, tokens] bool), else flattened."""
    x = output.astype(np.float64)
    if tokens is not None and x.ndim == 3 and x.shape[1] == tokens.shape[1]:
        weights = tokens[..., None].astype(np.float64)
        return (x * weights).sum(1) / np.maximum(weights.sum(1), 1.0)
    return x.reshape(len(x), -1)


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-30)


def neighbours(embeddings: np.ndarray, k: int = NEIGHBOURS) -> np.ndarray:
    """[N, k]: each row's k nearest other rows by cosine, as index sets (sorted)."""
    similarity = unit(embeddings) @ unit(embeddings).T
    np.fill_diagonal(similarity, -np.inf)
    return np.sort(np.argpartition(-similarity, k, axis=1)[:, :k], axis=1)


def retrieval(teacher: np.ndarray, student: np.ndarray, k: int = NEIGHBOURS) -> dict:
    """How much of each input's k nearest neighbours the student keeps (see the module docstring)."""
    a, b = neighbours(teacher, k), neighbours(student, k)
    overlap = (a[:, :, None] == b[:, None, :]).any(2).mean(1)
    return {"overlap": float(overlap.mean()), "same": float(np.mean(overlap == 1.0))}


def fidelity(teacher: np.ndarray, student: np.ndarray) -> dict:
    """Pooled cosine (mean, worst) and retrieval agreement of pooled [N, D] embeddings."""
    cos = np.sum(unit(teacher) * unit(student), axis=1)
    return {"cosine": float(cos.mean()), "worst_cosine": float(cos.min()), **retrieval(teacher, student)}


def one_run(name: str, args, folder: Path) -> dict:
    from evonnx.passes.compress import compress
    from evonnx.passes.engine.tasks import real_tokens
    from evonnx.runtime import decode
    from evonnx.tools.bench.corpus import session
    from evonnx.tools.corpus.fidelity import Reference
    from evonnx.tools.corpus.models import BY_NAME

    entry = BY_NAME[name]
    model = entry.path()
    reference = Reference(model, unseen_inputs(entry, args, folder), "cosine")
    tokens = real_tokens(reference.data)
    out = folder / f"{name}.evx"
    start = time.perf_counter()
    result = compress(model, out, calib=entry.calib_path(args.calib), metric=args.metric, seed=0, progress=False,
                      device="cpu", **(sized(entry, args) if args.size else
                                       {"max_drop": args.max_drop, "time_limit": args.time_limit}))
    seconds = time.perf_counter() - start
    student = reference.outputs(session(decode(out)))
    targets = [r for r in result.layers if r["role"] in ("conv", "matrix", "embedding")]
    bits = sorted({r["bits"] for r in targets})
    coded = [8 * r["coded_bytes"] / max(1, int(np.prod(r["shape"]))) for r in targets]
    trained = next((h for h in result.history if h.get("pass") == "distill-finetune"), None)
    return {"model": name, "family": entry.family, "mb": result.original_bytes / 1e6, "ratio": result.ratio,
            "sparsity": result.sparsity, "bits": bits,
            "coded_bits": [min(coded), max(coded)] if coded else [], "seconds": seconds,
            "time_limit": None if args.size and args.distill else args.time_limit,
            "held_out": result.held_out, "shipped": result.shipped, "calib": args.calib,
            "unseen": reference.data.num_samples,
            "metric": args.metric, "size": args.size, "distill": args.distill if args.size else 0,
            **({"best_step": trained["best_step"], "validation": [trained["val_kl_before"], trained["val_kl_best"]]}
               if trained else {}),
            **fidelity(pooled(reference.teacher[0], tokens), pooled(student[0], tokens))}


def unseen_inputs(entry, args, folder: Path) -> Path:
    """`--unseen` inputs (seed 1) less those equal to a calibration input (samples on axis 0), as an .npz."""
    def rows(arrays: dict) -> list[bytes]:
        return [b"".join(np.ascontiguousarray(arrays[k][i]).tobytes() for k in sorted(arrays))
                for i in range(len(next(iter(arrays.values()))))]

    with np.load(entry.calib_path(args.calib)) as f:
        seen = set(rows(dict(f)))
    with np.load(entry.calib_path(args.unseen, HELD_OUT_SEED)) as f:
        arrays = dict(f)
    new = np.array([r not in seen for r in rows(arrays)])
    out = folder / f"{entry.name}-unseen.npz"
    np.savez(out, **{k: v[new] for k, v in arrays.items()})
    return out


def sized(entry, args) -> dict:
    """compress's options for a `--size` run (see the module docstring)."""
    from evonnx.passes.pipeline import Pipeline
    if not args.distill:
        return {"max_bytes": args.size, "sparsity": 0.0, "max_drop": float("inf"), "time_limit": args.time_limit}
    return {"max_bytes": args.size, "max_drop": float("inf"), "pipeline": Pipeline([
        ("bit-allocation", SIZED_BITS),
        ("distill-finetune", {"data": str(entry.train_path(args.train)), "steps": args.distill, "batch_size": 16,
                              "lr": args.lr, "augment": [], "eval_every": 50})])}


def table(rows: list[dict]) -> str:
    lines = ["| model | budget metric or size | distillation steps (best) | MB | ratio | sparsity | "
             "coded bits a weight (min–max) | "
             "held-out drop (pts, 95 % bound) | unseen inputs | pooled cosine (mean / worst) | top-5 neighbours kept | "
             "same top-5 | seconds / limit |",
             "|---|---|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        bits = ("–".join(f"{b:.2f}" for b in r["coded_bits"]) if r.get("coded_bits")
                else "/".join(str(b) for b in r["bits"]) or "–")
        budget = f"size {r['size']}" if r.get("size") else r.get("metric", "cosine")
        steps = f"{r['distill']} (best {r['best_step']})" if r.get("best_step") is not None else r.get("distill", 0)
        lines.append(f"| {r['model']} | {budget} | {steps} | {r['mb']:.1f} | {r['ratio']:.2f}× | "
                     f"{r['sparsity']:.1%} | {bits} | "
                     f"{r['held_out']['points']:.2f} ({r['held_out']['upper']:.2f}) | {r['unseen']} | {r['cosine']:.4f} / "
                     f"{r['worst_cosine']:.4f} | {r['overlap']:.1%} | {r['same']:.1%} | "
                     f"{r['seconds']:.0f} / {format(r['time_limit'], 'g') if r.get('time_limit') else 'none'} |")
    goals = []
    for what, ratio, trained in (("without training", GOAL_RATIO, False), ("with distillation", 2 * GOAL_RATIO, True)):
        met = sorted({r["model"] for r in rows if r["ratio"] >= ratio and r["cosine"] >= GOAL_COSINE
                      and bool(r.get("distill")) == trained})
        goals.append(f"Goal: >= {ratio:g}x at >= {GOAL_COSINE:g} pooled cosine on unseen inputs {what}: "
                     f"{', '.join(met) if met else 'met by no model'}.")
    return "\n".join(lines) + "\n\n" + "\n".join(goals) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m evonnx.tools.bench.embedding", description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", choices=MODELS, default=["minilm-l3", "vit-focus"])
    p.add_argument("--calib", type=int, help="calibration inputs (seed 0; default: each model's corpus set)")
    p.add_argument("--unseen", type=int, default=128, help="inputs (seed 1) the decoded models are measured on")
    p.add_argument("--time-limit", type=float, default=600.0)
    p.add_argument("--metric", default="cosine", choices=["cosine", "cosine:mean", "cosine:first"],
                   help="the budget's metric: the token outputs' cosine, or that of the pooled outputs")
    p.add_argument("--max-drop", type=float, default=1.0, help="points of cosine (1: cosine >= 0.99)")
    p.add_argument("--size", help="a fixed size (15x: the model file's size / 15) instead of the budget")
    p.add_argument("--distill", type=int, default=0, help="with --size: distillation steps on the grid")
    p.add_argument("--train", type=int, default=4096, help="unlabeled training inputs for --distill")
    p.add_argument("--lr", type=float, default=1e-4, help="the distillation's learning rate")
    p.add_argument("--save", type=Path, help="keep each container in this folder (MODEL.evx)")
    p.add_argument("--jsonl", help="append each run here as it finishes")
    p.add_argument("--from-jsonl", nargs="+", help="only tabulate the runs in these files")
    p.add_argument("--out")
    args = p.parse_args(argv)
    if args.from_jsonl:
        return emit(table(read_rows(args.from_jsonl)), args.out)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            row = {**one_run(name, args, args.save or Path(tmp)),
                   "machine": f"{platform.machine()}, {os.cpu_count()} cores"}
            rows.append(row)
            keep_row(row, args.jsonl)
    return emit(table(rows), args.out)


if __name__ == "__main__":
    from evonnx.tools.interrupt import entry_point
    raise SystemExit(entry_point(main))

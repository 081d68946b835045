"""Rounding to nearest against GPTQ's error-compensated rounding, on the same grids of real models.

    python -m evonnx.tools.bench.rounding [--models vit-focus minilm-l3] [--bits 2 3 4] [--calib 64]
        [--metric cosine|cosine:mean] [--gram-share 0.67] [--out FILE.md]

Per corpus model: every target weight (at least 32 entries) on the entropy-sized per-channel grid at one rate
(`uniform/channel/rate@B`, about B coded bits a weight), rounded to nearest or with GPTQ
(`uniform/channel/rate+gptq@B`, passes/quant/gptq.py; Grams from the calibration share the search fits to).
The grid and so the coded size are the same either way; the table gives the estimated coded bytes of the
weights, the seconds to quantize them all (the first GPTQ row includes the pass for the activations and the
Grams), and the cosine drop of the lowest output against the teacher (100 x (1 - mean cosine)) on the
calibration samples fitted to and on the held-out quarter (seed 0). `--metric cosine:mean` measures the drop of
the outputs mean-pooled over the real tokens instead, and GPTQ's Gram of an embedding table probes that pooled
output (passes/quant/tables.py). `--gram-share S` takes the Grams from the first S of the fitted samples only and
also reports the drop on the other fitted samples, which the rounding did not see: how optimistic a measurement
on the Grams' own samples is.
"""
from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np

from evonnx.tools.bench import emit

MODELS = ("vit-focus", "minilm-l3")


def one_model(name: str, bits: list[int], calib: int | None, metric: str = "cosine",
              gram_share: float = 1.0) -> list[dict]:
    from evonnx.passes.base import PassContext
    from evonnx.passes.engine.tasks import pick
    from evonnx.passes.engine.calib import fixed_batch, load_npz
    from evonnx.passes.quant.apply import Fidelity, Quantizer
    from evonnx.passes.quant.layer import QuantSpec
    from evonnx.passes.quant.sizing import coded_bytes
    from evonnx.passes.state import load_state
    from evonnx.tools.corpus.models import BY_NAME

    entry = BY_NAME[name]
    state = load_state(str(entry.path()))
    data = load_npz(entry.calib_path(calib), state.model, {}, {})
    multiple = fixed_batch(state.model, data.axes) or 1
    fit, held = data.split(0.25, 0, multiple)
    grams = -(-int(gram_share * fit.num_samples) // multiple) * multiple
    parts = [("fit", fit.subset(grams)), ("held", held)]
    if grams < fit.num_samples:
        parts.append(("unseen by the Grams", fit.select(np.arange(grams, fit.num_samples), "the other fitted")))
    fidelity = {}
    for part, calib_data in parts:
        engine = PassContext(calib_data, device="cpu").engine(state)
        task = pick(metric, engine.teacher, engine.output_names, None, engine.axes)
        fidelity[part] = Fidelity(engine, {n: state.current(n) for n in engine.weight_names}, task)
    quantizer = Quantizer(state, fidelity["fit"].engine, task=task)
    names = [n for n in state.targets if state.table[n].size >= 32]
    rows = []
    for b in bits:
        for rounding in ("nearest", "gptq"):
            spec = QuantSpec.parse(f"uniform/channel/rate{'+gptq' if rounding == 'gptq' else ''}", b)
            start = time.perf_counter()
            done = {n: quantizer.quantize(n, spec) for n in names}
            seconds = time.perf_counter() - start
            weights = {n: q.weight for n, q in done.items()}
            drops = {part: f.evaluate([weights])[0].task.points for part, f in fidelity.items()}
            rows.append({"model": name, "params": sum(state.table[n].size for n in names), "bits": b,
                         "rounding": rounding, "mb": sum(coded_bytes(q.tensor)["total"] for q in done.values()) / 1e6,
                         "seconds": seconds, "fit": drops["fit"], "held": drops["held"],
                         "rest": drops.get("unseen by the Grams"), "metric": metric,
                         "samples": " / ".join(str(f.engine.calib.num_samples) for f in fidelity.values())})
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| model | weights | rate (bits) | rounding | coded MB | quantize (s) | metric | drop, fitted | "
             "drop, held out | drop, fitted but not in the Grams | samples fitted / held out / not in the Grams |",
             "|---|---:|---:|---|---:|---:|---|---:|---:|---:|---|"]
    for r in rows:
        rest = "–" if r["rest"] is None else f"{r['rest']:.3f}"
        lines.append(f"| {r['model']} | {r['params'] / 1e6:.1f}M | {r['bits']} | {r['rounding']} | {r['mb']:.2f} | "
                     f"{r['seconds']:.1f} | {r['metric']} | {r['fit']:.3f} | {r['held']:.3f} | {rest} | "
                     f"{r['samples']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m evonnx.tools.bench.rounding", description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    p.add_argument("--bits", nargs="+", type=int, default=[2, 3, 4])
    p.add_argument("--calib", type=int, help="calibration inputs (seed 0; default: each model's corpus set)")
    p.add_argument("--metric", default="cosine", choices=["cosine", "cosine:mean", "cosine:first"],
                   help="the drop measured: of the lowest output, or of the token outputs pooled")
    p.add_argument("--gram-share", type=float, default=1.0,
                   help="the share of the fitted samples the Grams come from (the rest measured apart)")
    p.add_argument("--out")
    args = p.parse_args(argv)
    rows = [r for name in args.models for r in one_model(name, args.bits, args.calib, args.metric, args.gram_share)]
    machine = f"{platform.machine()}, {os.cpu_count()} cores"
    return emit(table(rows) + f"\n\n{machine}", args.out)


if __name__ == "__main__":
    from evonnx.tools.interrupt import entry_point
    raise SystemExit(entry_point(main))

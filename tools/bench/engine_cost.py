"""Cost of one candidate evaluation relative to a forward pass of the unmodified model, measured in one run.

    python -m evonnx.tools.bench.engine_cost [--models lenet300 lenet5 resnet50ish] [--out FILE.md]

Three ways of running a candidate weight set on the same batch are timed against the baked model:
weights fed as inputs to one long-lived session (what the engine does), and a new session per candidate.
"""
from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import numpy as np

from evonnx.passes.engine.calib import load_npz
from evonnx.passes.engine.fitness import FitnessEngine, Runner
from evonnx.passes.state import load_state
from evonnx.tools.bench import emit

BATCH = {"lenet300": 256, "lenet5": 256, "resnet50ish": 4}


def _interleaved_ratio(reference, other, repeats: int) -> tuple[float, float]:
    """Median reference time and the median of per-round time ratios other/reference, run alternately so
    that load from other processes hits both alike."""
    reference(), other()  # warm-up
    ref_times, ratios = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        reference()
        t1 = time.perf_counter()
        other()
        t2 = time.perf_counter()
        ref_times.append(t1 - t0)
        ratios.append((t2 - t1) / (t1 - t0))
    return float(np.median(ref_times)), float(np.median(ratios))


def measure(name: str, device: str, repeats: int, models_dir: str | None = None) -> dict:
    if models_dir and Path(models_dir, name, "model.onnx").is_file():  # copied elsewhere (a GPU machine, say)
        model_path, calib_path = Path(models_dir, name, "model.onnx"), Path(models_dir, name, "calib.npz")
    else:
        from evonnx.tools.zoo import build
        entry = build(name)
        model_path, calib_path = entry.model_path, entry.calib_path
    state = load_state(model_path)
    calib = load_npz(calib_path, state.model).subset(BATCH[name])
    engine = FitnessEngine(state.model, calib, state.targets, device=device, batch_size=BATCH[name], held=state.held)
    baked = Runner(state.model, engine.providers, held=state.held)
    batch = engine.batches[0]
    rng = np.random.default_rng(0)
    layer = state.targets[0]
    candidate = {layer: state.original(layer) * (rng.random(state.table[layer].shape) > 0.5)}

    def fresh_session():
        Runner(state.replace(weights=candidate).to_onnx(), engine.providers).run(batch)

    t_baked, fed = _interleaved_ratio(lambda: baked.run(batch), lambda: engine.outputs(candidate), repeats)
    _, fresh = _interleaved_ratio(lambda: baked.run(batch), fresh_session, max(3, repeats // 5))
    return {"model": name, "params": sum(state.table[n].size for n in state.targets), "batch": BATCH[name],
            "provider": engine.provider, "baked_ms": t_baked * 1e3, "fed": fed, "fresh": fresh}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(BATCH))
    parser.add_argument("--device", default="auto")
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--out", help="also write the table to this markdown file")
    parser.add_argument("--models-dir", help="read NAME/model.onnx and NAME/calib.npz from here instead of the zoo")
    args = parser.parse_args(argv)
    rows = [measure(m, args.device, args.repeats, args.models_dir) for m in args.models]
    lines = [f"machine: {platform.machine()}, {platform.processor() or platform.platform()}",
             "", "| model | target params | batch | provider | baked forward (ms) | weights fed, one session | new session per candidate |",
             "|---|---:|---:|---|---:|---:|---:|"]
    lines += [f"| {r['model']} | {r['params']:,} | {r['batch']} | {r['provider']} | {r['baked_ms']:.2f} | "
              f"{r['fed']:.2f}× | {r['fresh']:.2f}× |" for r in rows]
    text = "\n".join(lines)
    return emit(text, args.out)


if __name__ == "__main__":
    from evonnx.tools.interrupt import entry_point
    raise SystemExit(entry_point(main))

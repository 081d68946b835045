"""Candidate evaluations per second on Ray actors against the serial search, measured in one run.

    python -m evonnx.tools.bench.scaleout [--models resnet50ish captcha-lstm] [--workers 1 2 4 8]
        [--samples 32] [--population 16] [--generations 4] [--out FILE.md]

One mid-graph layer of each model is visited as Directed Evolution does (cached activations, baked suffix);
a generation is `population` candidates zeroing 1 % of the layer from a pool twice that size, scored
serially and then with `--workers` actors of a local Ray runtime (contiguous chunks, one per actor).
Speed-up is against serial, efficiency = speed-up / workers. Ray's overhead is the round trip of an empty
actor call, against one candidate's serial cost. The split by calibration shards (every actor all
candidates on 1/W of the samples, partial sums added) is timed in-process as per-actor compute beside the
split by candidates (1/W of the candidates on all samples).
"""
from __future__ import annotations

import argparse
import os
import time

import numpy as np

from evonnx.tools.bench import emit


def load(name: str, samples: int):
    """(state, calibration data) of a zoo or corpus model."""
    from evonnx.passes.engine.calib import load_npz
    from evonnx.passes.state import load_state
    if name in ("lenet300", "lenet5", "resnet50ish"):
        from evonnx.tools.zoo import build
        entry = build(name)
        model, calib = entry.model_path, entry.calib_path
    else:
        from evonnx.tools.corpus.models import BY_NAME
        entry = BY_NAME[name]
        model, calib = entry.path(), entry.calib_path(samples)
    state = load_state(model)
    return state, load_npz(calib, state.model)


def evaluator(state, calib, samples: int):
    """The Evaluator of every fast target layer on `samples` samples, and the mid-graph one."""
    from evonnx.passes.engine.providers import resolve
    from evonnx.passes.sparsity.layers import analyse
    from evonnx.passes.sparsity.suffix import Evaluator
    layers = [l for l in analyse(state, state.targets) if l.fast]
    ev = Evaluator(state, layers, calib, resolve("cpu"), samples, samples, samples)
    return ev, layers[len(layers) // 2]


def generation(layer, rng: np.random.Generator, population: int) -> tuple[np.ndarray, np.ndarray]:
    """A pool of 2n entries and `population` candidates of n of them (n: 1 % of the layer)."""
    n = max(1, layer.size // 100)
    pool = np.sort(rng.choice(layer.size, 2 * n, replace=False))
    keys = rng.random((population, 2 * n))
    members = keys < np.sort(keys, axis=1)[:, n:n + 1]
    return pool, members


def rate(ev, layer, state, pool: np.ndarray, members: np.ndarray, generations: int) -> float:
    """Candidates per second of a fresh visit (the first generation, which builds the suffix, not timed)."""
    view = ev.visit(layer, state)
    view.use_pool(pool)
    view.evaluate_members(members)
    t0 = time.perf_counter()
    for _ in range(generations):
        view.evaluate_members(members)
    return generations * len(members) / (time.perf_counter() - t0)


def round_trip(workers, calls: int = 50) -> float:
    """Seconds of an empty actor call, gathered."""
    import ray
    actor = workers.actors[0]
    ray.get(actor.pid.remote())
    t0 = time.perf_counter()
    for _ in range(calls):
        ray.get(actor.pid.remote())
    return (time.perf_counter() - t0) / calls


def split_compute(state, calib, layer_name: str, samples: int, pool, members, ways: int) -> tuple[float, float]:
    """Per-actor seconds of one generation split `ways` ways by candidates, and by calibration shards."""
    def seconds(n_samples: int, rows: np.ndarray) -> float:
        ev, _ = evaluator(state, calib.subset(n_samples), n_samples)
        view = ev.visit(ev.layers[layer_name], state)
        view.use_pool(pool)
        view.evaluate_members(rows)
        t0 = time.perf_counter()
        view.evaluate_members(rows)
        return time.perf_counter() - t0
    return seconds(samples, members[: -(-len(members) // ways)]), seconds(samples // ways, members)


def measure(name: str, workers: list[int], samples: int, population: int, generations: int) -> list[dict]:
    from evonnx.passes.engine.distributed import Workers
    state, calib = load(name, samples)
    ev, layer = evaluator(state, calib, samples)
    pool, members = generation(layer, np.random.default_rng(0), population)
    serial = rate(ev, layer, state, pool, members, generations)
    chunk, shard = split_compute(state, calib, layer.weight, ev.n_fit, pool, members, 2)
    rows = [{"model": name, "layer": layer.weight, "samples": ev.n_fit, "workers": 0, "rate": serial,
             "chunk_s": chunk, "shard_s": shard}]
    for w in workers:
        with Workers(w, device="cpu") as pool_workers:
            ev.workers = pool_workers
            got = rate(ev, layer, state, pool, members, generations)
            rows.append({"model": name, "layer": layer.weight, "samples": ev.n_fit, "workers": w, "rate": got,
                         "overhead": round_trip(pool_workers), "eval": 1 / serial})
        ev.workers = None
    return rows


def table(rows: list[dict], load_before: float, load_after: float) -> str:
    lines = [f"{os.cpu_count()} CPUs, load average {load_before:.1f} before, {load_after:.1f} after; "
             f"EVONNX_ORT_THREADS={os.environ.get('EVONNX_ORT_THREADS', 'unset')}", "",
             "| model | layer | samples | workers | candidates/s | speed-up | efficiency | Ray call / one evaluation |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    splits = []
    for r in rows:
        if r["workers"] == 0:
            serial = r["rate"]
            lines.append(f"| {r['model']} | {r['layer'][-24:]} | {r['samples']} | serial | {serial:.1f} | 1 | - | - |")
            splits.append(f"| {r['model']} | {1e3 * r['chunk_s']:.1f} | {1e3 * r['shard_s']:.1f} |")
            continue
        up = r["rate"] / serial
        lines.append(f"| {r['model']} | {r['layer'][-24:]} | {r['samples']} | {r['workers']} | {r['rate']:.1f} | "
                     f"{up:.2f} | {up / r['workers']:.2f} | {1e3 * r['overhead']:.2f} ms / "
                     f"{1e3 * r['eval']:.2f} ms |")
    lines += ["", "Per-actor compute of one generation split 2 ways:", "",
              "| model | by candidates (ms) | by calibration shards (ms) |", "|---|---:|---:|", *splits]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m evonnx.tools.bench.scaleout", description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["resnet50ish", "captcha-lstm"])
    p.add_argument("--workers", nargs="+", type=int, default=[1, 2, 4, 8])
    p.add_argument("--samples", type=int, default=32, help="calibration samples scored per candidate")
    p.add_argument("--population", type=int, default=16)
    p.add_argument("--generations", type=int, default=4, help="timed generations per setting")
    p.add_argument("--out")
    args = p.parse_args(argv)
    workers = [w for w in args.workers if w <= (os.cpu_count() or 1)]
    before = os.getloadavg()[0]
    rows = [r for name in args.models
            for r in measure(name, workers, args.samples, args.population, args.generations)]
    return emit(table(rows, before, os.getloadavg()[0]), args.out)


if __name__ == "__main__":
    raise SystemExit(main())

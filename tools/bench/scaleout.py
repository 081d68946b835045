"""Candidate evaluations per second on Ray actors against the serial search, measured in one run.

    python -m evonnx.tools.bench.scaleout [--models resnet50ish captcha-lstm] [--workers 1 2 4 8]
        [--samples 32] [--population 16] [--rounds 3] [--mode search|bits] [--out FILE.md]

One mid-graph layer of each model is visited as Directed Evolution does (cached activations, baked suffix);
a generation is `population` candidates zeroing 1 % of the layer from a pool twice that size, scored
serially and with `--workers` actors of a local Ray runtime (contiguous chunks, one per actor), the two
alternately. Speed-up is the median ratio of the pairs, efficiency = speed-up / workers; run it with
EVONNX_ORT_THREADS=1 OMP_NUM_THREADS=1 for per-core figures (an actor holds one CPU). Ray's overhead is the round trip of an empty
actor call, against one candidate's serial cost. The split by calibration shards (every actor all
candidates on 1/W of the samples, partial sums added) is timed in-process as per-actor compute beside the
split by candidates (1/W of the candidates on all samples).

`--mode bits` times the bit allocation's sensitivity instead: one mid-graph target quantized under each of
BIT_SPECS, each measured alone by a full forward pass over `samples` samples, serially and split across the
actors (passes/engine/distributed.py `Workers.fidelity`), alternately; its set-up is sharing the Fidelity
(`ray.put`) and the actors' first measurements (fetching it, building the session).
"""
from __future__ import annotations

import argparse
import os
import time

import numpy as np

from evonnx.tools.bench import emit

BIT_SPECS = [f"uniform/channel/{kind}@{bits}" for kind in ("sym", "asym") for bits in (2, 4, 6, 8)]


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


def timed(view, members: np.ndarray) -> float:
    t0 = time.perf_counter()
    view.evaluate_members(members)
    return time.perf_counter() - t0


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
        timed(view, rows)
        return timed(view, rows)
    return seconds(samples, members[: -(-len(members) // ways)]), seconds(samples // ways, members)


def measure(name: str, workers: list[int], samples: int, population: int, rounds: int) -> list[dict]:
    """Per worker count: serial and distributed generations of one visit each, timed alternately (`rounds`
    pairs, so that load from other processes hits both alike); the first generation of a visit (which builds
    the suffix's ORT session, and ships the visit) is its set-up."""
    from evonnx.passes.engine.distributed import Workers
    state, calib = load(name, samples)
    ev, layer = evaluator(state, calib, samples)
    pool, members = generation(layer, np.random.default_rng(0), population)
    local = ev.visit(layer, state)
    local.use_pool(pool)
    local_first = timed(local, members)
    chunk, shard = split_compute(state, calib, layer.weight, ev.n_fit, pool, members, 2)
    rows = []
    for w in workers:
        with Workers(w, device="cpu") as pool_workers:
            ev.workers = pool_workers
            for _ in range(2):  # the first visit also starts the actors' imports
                remote = ev.visit(layer, state)
                remote.use_pool(pool)
                remote_first = timed(remote, members)
            ev.workers = None
            pairs = np.array([(timed(local, members), timed(remote, members)) for _ in range(rounds)])
            serial, spread = np.median(pairs, axis=0)
            rows.append({"model": name, "layer": layer.weight, "samples": ev.n_fit, "workers": w,
                         "serial": population / serial, "rate": population / spread,
                         "speedup": float(np.median(pairs[:, 0] / pairs[:, 1])),
                         "setup": (local_first - serial, remote_first - spread),
                         "overhead": round_trip(pool_workers), "eval": serial / population,
                         "chunk_s": chunk, "shard_s": shard})
    return rows


def measure_bits(name: str, workers: list[int], samples: int, rounds: int) -> list[dict]:
    """Per worker count: one mid-graph target's BIT_SPECS quantizations measured alone, serially and on the
    actors, timed alternately (`rounds` pairs); the first distributed measurements are the set-up."""
    from evonnx.passes.base import PassContext
    from evonnx.passes.engine.distributed import Workers
    from evonnx.passes.quant.apply import Fidelity, Quantizer
    from evonnx.passes.quant.layer import QuantSpec
    state, calib = load(name, samples)
    engine = PassContext(calib.subset(samples), device="cpu").engine(state)
    fidelity = Fidelity(engine, {n: state.current(n) for n in engine.weight_names})
    target, quantizer = state.targets[len(state.targets) // 2], Quantizer(state, engine)
    changes = [{target: quantizer.quantize(target, QuantSpec.parse(spec)).weight} for spec in BIT_SPECS]

    def timed(measurer) -> float:
        t0 = time.perf_counter()
        measurer.evaluate(changes)
        return time.perf_counter() - t0

    timed(fidelity)  # warm-up
    rows = []
    for w in workers:
        with Workers(w, device="cpu") as pool:
            t0 = time.perf_counter()
            shared = pool.fidelity(fidelity, state.model)
            put = time.perf_counter() - t0
            first = timed(shared)
            pairs = np.array([(timed(fidelity), timed(shared)) for _ in range(rounds)])
            serial, spread = np.median(pairs, axis=0)
            rows.append({"model": name, "layer": target, "samples": engine.calib.num_samples, "workers": w,
                         "serial": len(changes) / serial, "rate": len(changes) / spread,
                         "speedup": float(np.median(pairs[:, 0] / pairs[:, 1])), "setup": (put, first - spread),
                         "overhead": round_trip(pool), "eval": serial / len(changes)})
    return rows


def header(load_before: float, load_after: float) -> str:
    env = ", ".join(f"{k}={os.environ.get(k, 'unset')}" for k in ("EVONNX_ORT_THREADS", "OMP_NUM_THREADS"))
    return f"{os.cpu_count()} CPUs, load average {load_before:.1f} before, {load_after:.1f} after; {env}"


def bits_table(rows: list[dict], load_before: float, load_after: float) -> str:
    lines = [header(load_before, load_after), "",
             f"Each layer quantized alone, {len(BIT_SPECS)} quantizations ({', '.join(BIT_SPECS)}):", "",
             "| model | layer | samples | workers | serial meas./s | workers meas./s | speed-up | efficiency "
             "| share (ray.put) / first extra (s) | Ray call / one measurement (ms) |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['layer'][-24:]} | {r['samples']} | {r['workers']} | {r['serial']:.2f} | "
                     f"{r['rate']:.2f} | {r['speedup']:.2f} | {r['speedup'] / r['workers']:.2f} | "
                     f"{r['setup'][0]:.2f} / {r['setup'][1]:.2f} | {1e3 * r['overhead']:.2f} / {1e3 * r['eval']:.1f} |")
    return "\n".join(lines)


def table(rows: list[dict], load_before: float, load_after: float) -> str:
    lines = [header(load_before, load_after), "",
             "| model | layer | samples | workers | serial cand./s | workers cand./s | speed-up | efficiency "
             "| visit set-up serial / workers (s) | Ray call / one evaluation (ms) |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['layer'][-24:]} | {r['samples']} | {r['workers']} | {r['serial']:.1f} | "
                     f"{r['rate']:.1f} | {r['speedup']:.2f} | {r['speedup'] / r['workers']:.2f} | "
                     f"{r['setup'][0]:.2f} / {r['setup'][1]:.2f} | {1e3 * r['overhead']:.2f} / {1e3 * r['eval']:.2f} |")
    splits = {r["model"]: f"| {r['model']} | {1e3 * r['chunk_s']:.1f} | {1e3 * r['shard_s']:.1f} |" for r in rows}
    lines += ["", "Per-actor compute of one generation split 2 ways:", "",
              "| model | by candidates (ms) | by calibration shards (ms) |", "|---|---:|---:|", *splits.values()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m evonnx.tools.bench.scaleout", description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["resnet50ish", "captcha-lstm"])
    p.add_argument("--workers", nargs="+", type=int, default=[1, 2, 4, 8])
    p.add_argument("--samples", type=int, default=32, help="calibration samples scored per candidate")
    p.add_argument("--population", type=int, default=16)
    p.add_argument("--rounds", type=int, default=3, help="timed serial/distributed pairs of generations")
    p.add_argument("--mode", choices=["search", "bits"], default="search",
                   help="Directed Evolution's candidates, or the bit allocation's layers measured alone")
    p.add_argument("--out")
    args = p.parse_args(argv)
    workers = [w for w in args.workers if w <= (os.cpu_count() or 1)]
    before = os.getloadavg()[0]
    if args.mode == "bits":
        rows = [r for name in args.models for r in measure_bits(name, workers, args.samples, args.rounds)]
        return emit(bits_table(rows, before, os.getloadavg()[0]), args.out)
    rows = [r for name in args.models
            for r in measure(name, workers, args.samples, args.population, args.rounds)]
    return emit(table(rows, before, os.getloadavg()[0]), args.out)


if __name__ == "__main__":
    from evonnx.tools.interrupt import entry_point
    raise SystemExit(entry_point(main))

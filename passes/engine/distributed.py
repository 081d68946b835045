"""Candidate evaluation on Ray actors (the `distributed` extra: pip install 'evonnx[distributed]').

Each actor is a worker process holding one layer visit at a time: the visit's scoring copy (suffix model,
cached activations, the teacher's outputs; passes/sparsity/suffix.py) is put in Ray's object store once per
visit, and each later change (a search's pool, a committed zero-set) once as a small op. A generation's
candidates are split into contiguous chunks, one per actor, and gathered in order, so the scores are the
serial ones. An actor that dies is restarted and its task re-run: it rebuilds the visit from the object
store and replays the ops, so a killed worker changes nothing but the time taken.

Candidates, not calibration shards, are split: per actor both cost the same compute (tools/bench/scaleout.py),
and shards' partial sums would add up in another order than the serial run's. An actor pays off where one
candidate costs milliseconds (Ray's round trip is ~0.7 ms): convolutional and recurrent models, not tiny MLPs.

ONNX Runtime's threads per actor follow EVONNX_ORT_THREADS (1 when unset: an actor holds one CPU); set it
for the serial run too when comparing results bit by bit.
"""
from __future__ import annotations

import logging
import os

import numpy as np
import ray

from evonnx.errors import EvonnxError
from evonnx.passes.engine.fitness import THREADS_ENV
from evonnx.passes.engine.providers import resolve

RESTARTS = 8  # times an actor is restarted, and a task re-run, after its process died


@ray.remote(max_restarts=RESTARTS, max_task_retries=RESTARTS)
class Scorer:
    """One worker process: the current visit, rebuilt from the object store when asked for another."""

    def __init__(self, threads: str, device: str):
        os.environ[THREADS_ENV] = threads
        self.device, self.key, self.view, self.done = device, None, None, 0

    def pid(self) -> int:
        return os.getpid()

    def score(self, key: int, view: list, ops: list, members: np.ndarray) -> np.ndarray:
        """Fitness of `members` in visit `key` (`view`: [its ObjectRef]) after `ops` (refs of (kind, array))."""
        if key != self.key:
            self.view, self.key, self.done = ray.get(view[0]), key, 0
            self.view.ev.providers = resolve(self.device)
        for kind, arg in ray.get(ops[self.done:]):
            self.view.use_pool(arg) if kind == "pool" else self.view.apply(arg)
        self.done = len(ops)
        return self.view.evaluate_members(members)


def gather(futures: list) -> list:
    return ray.get(futures)


class SharedView:
    """The driver's handle on one layer visit shared with the actors."""

    def __init__(self, actors: list, key: int, view):
        self.actors, self.key, self.ref, self.ops = actors, key, ray.put(view.scoring_copy()), []

    def use_pool(self, pool: np.ndarray) -> None:
        self.ops.append(ray.put(("pool", pool)))

    def apply(self, idx: np.ndarray) -> None:
        self.ops.append(ray.put(("apply", idx)))

    def score(self, members: np.ndarray) -> np.ndarray:
        chunks = np.array_split(members, min(len(self.actors), len(members)))
        futures = [a.score.remote(self.key, [self.ref], self.ops, c) for a, c in zip(self.actors, chunks)]
        return np.concatenate(gather(futures))


class Workers:
    """Scoring actors for a run: `count` of them on a local Ray runtime (started here unless one is running), or
    on the cluster at `address` (default count: its CPUs). A context manager; the actors end with it."""

    def __init__(self, count: int | None = None, address: str | None = None, device: str = "auto"):
        if count is not None and count < 1:
            raise EvonnxError(f"--workers must be at least 1, not {count}")
        self.count, self.address, self.device = count, address, device
        self.actors: list = []
        self.started, self.visits = False, 0

    def __enter__(self) -> "Workers":
        if not ray.is_initialized():
            # a local runtime runs its actors at the driver's priority (Ray's default, niceness 15, starves them
            # on a machine shared with other work)
            local = {} if self.address else {"num_cpus": self.count, "_system_config": {"worker_niceness": 0}}
            ray.init(address=self.address, include_dashboard=False, logging_level=logging.ERROR,
                     log_to_driver=False, **local)
            self.started = True
        resources = ray.cluster_resources()
        n = self.count or max(1, int(resources.get("CPU", 1)))
        gpus = resources.get("GPU", 0) if self.device != "cpu" else 0
        threads = os.environ.get(THREADS_ENV) or "1"
        options = {"num_cpus": 1, "num_gpus": min(1.0, gpus / n) if gpus else 0}
        self.actors = [Scorer.options(**options).remote(threads, self.device) for _ in range(n)]
        return self

    def __exit__(self, *exc) -> None:
        for actor in self.actors:
            ray.kill(actor)
        self.actors = []
        if self.started:
            ray.shutdown()

    def share(self, view) -> SharedView:
        """Hand the actors a layer visit (a LayerView)."""
        self.visits += 1
        return SharedView(self.actors, self.visits, view)

    def pids(self) -> list[int]:
        return ray.get([a.pid.remote() for a in self.actors])

"""Candidate evaluation on Ray actors (the `distributed` extra: pip install 'evonnx[distributed]'), and
benchmark grids as plain Ray tasks (`grid`).

Each actor is a worker process holding one shared object at a time, put in Ray's object store once: a
Directed Evolution layer visit's scoring copy (suffix model, cached activations, the teacher's outputs;
passes/sparsity/suffix.py), each later change to it (a search's pool, a committed zero-set) once as a small
op; or a bit allocation's Fidelity (passes/quant/apply.py: the model with its weights as inputs, the
calibration batches, the incoming model's outputs), whose layers quantized alone the actors measure. A
generation's candidates, or a layer's quantizations, are split into contiguous chunks, one per actor, and
gathered in order, so the results are the serial ones. An actor that dies is restarted and its task re-run:
it rebuilds the object from the object store and replays the ops, so a killed worker changes nothing but
the time taken.

Candidates, not calibration shards, are split: per actor both cost the same compute (tools/bench/scaleout.py),
and shards' partial sums would add up in another order than the serial run's. An actor pays off where one
candidate costs milliseconds (Ray's round trip is ~0.7 ms): convolutional and recurrent models, not tiny MLPs.

ONNX Runtime's threads per actor follow EVONNX_ORT_THREADS (1 when unset: an actor holds one CPU); set it
for the serial run too when comparing results bit by bit.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator, Sequence
from typing import TypeVar

import numpy as np
import onnx
import ray

from evonnx.errors import EvonnxError
from evonnx.passes.engine.fitness import THREADS_ENV, FitnessEngine, Runner, expose_weights, run_batches
from evonnx.passes.engine.providers import resolve
from evonnx.passes.quant.apply import Fidelity, Measure

RESTARTS = 8  # times an actor is restarted, and a task re-run, after its process died
T = TypeVar("T")


@ray.remote(max_restarts=RESTARTS, max_task_retries=RESTARTS)
class Scorer:
    """One worker process: the current shared object, rebuilt from the object store when asked for another."""

    def __init__(self, threads: str, device: str):
        os.environ[THREADS_ENV] = threads
        self.device, self.key, self.view, self.done = device, None, None, 0

    def pid(self) -> int:
        return os.getpid()

    def _hold(self, key: int, view: list, engine: str):
        """Shared object `key` (`view`: [its ObjectRef]), fetched when it is another, its `engine` attribute
        set to run on this worker's device."""
        if key != self.key:
            self.view, self.key, self.done = ray.get(view[0]), key, 0
            getattr(self.view, engine).providers = resolve(self.device)
        return self.view

    def score(self, key: int, view: list, ops: list, members: np.ndarray) -> np.ndarray:
        """Fitness of `members` in visit `key` after `ops` (refs of (kind, array))."""
        visit = self._hold(key, view, "ev")
        for kind, arg in ray.get(ops[self.done:]):
            visit.use_pool(arg) if kind == "pool" else visit.apply(arg)
        self.done = len(ops)
        return visit.evaluate_members(members)

    def measure(self, key: int, view: list, changes: list[dict[str, np.ndarray]]) -> list[Measure]:
        """Fidelity `key`'s measures of `changes` (each a dict of weights)."""
        return self._hold(key, view, "engine").evaluate(changes)


def gather(futures: list) -> list:
    return ray.get(futures)


def spread(actors: list, items: Sequence, submit: Callable[[object, np.ndarray], object]) -> list:
    """`submit(actor, indices)` for contiguous chunks of `items`' indices, one per actor (fewer actors when
    fewer items), gathered in order."""
    chunks = np.array_split(np.arange(len(items)), max(1, min(len(actors), len(items))))
    return gather([submit(a, c) for a, c in zip(actors, chunks)])


class SharedView:
    """The driver's handle on one layer visit shared with the actors."""

    def __init__(self, actors: list, key: int, view):
        self.actors, self.key, self.ref, self.ops = actors, key, ray.put(view.scoring_copy()), []

    def use_pool(self, pool: np.ndarray) -> None:
        self.ops.append(ray.put(("pool", pool)))

    def apply(self, idx: np.ndarray) -> None:
        self.ops.append(ray.put(("apply", idx)))

    def score(self, members: np.ndarray) -> np.ndarray:
        return np.concatenate(spread(self.actors, members, lambda a, c: a.score.remote(self.key, [self.ref],
                                                                                        self.ops, members[c])))


class Student:
    """What a Fidelity's measurements read of its FitnessEngine, without the ORT sessions: the model with its
    weights as graph inputs, the calibration batches, the weights the Fidelity's base leaves out. The session
    is made where it first runs."""

    def __init__(self, engine: FitnessEngine, model: onnx.ModelProto, base: dict[str, np.ndarray]):
        self.model, self.label = expose_weights(model, engine.weight_names), engine.label
        self.batches, self.axes, self.providers = engine.batches, engine.axes, engine.providers
        self.output_names, self.groups = engine.output_names, engine.groups
        self.original = {n: w for n, w in engine.original.items() if n not in base}  # every feed holds the base
        self.held = engine.held
        self.runner: Runner | None = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "runner": None}

    def outputs(self, candidate: dict[str, np.ndarray]) -> list[np.ndarray]:
        """As FitnessEngine.outputs, from numpy feeds: the batches with the weights and `candidate`."""
        if self.runner is None:
            self.runner = Runner(self.model, self.providers, self.label, held=self.held)
        return run_batches(self.runner, [{**batch, **self.original, **candidate} for batch in self.batches],
                           self.axes)


class SharedFidelity:
    """The driver's handle on a Fidelity shared with the actors: `evaluate` as Fidelity's, on the actors."""

    def __init__(self, actors: list, key: int, fidelity: Fidelity, model: onnx.ModelProto):
        portable = object.__new__(Fidelity)
        portable.__dict__.update(fidelity.__dict__, engine=Student(fidelity.engine, model, fidelity.base))
        self.actors, self.key, self.ref = actors, key, ray.put(portable)

    def evaluate(self, changes: list[dict[str, np.ndarray]]) -> list[Measure]:
        """The incoming weights with each dict of `changes` applied, measured (in order)."""
        parts = spread(self.actors, changes, lambda a, c: a.measure.remote(self.key, [self.ref],
                                                                             [changes[i] for i in c]))
        return [m for part in parts for m in part]


def start(count: int | None, address: str | None) -> bool:
    """Join the cluster at `address`, or start a local runtime of `count` CPUs (default: all), unless Ray runs
    already in this process; whether it was started here."""
    if ray.is_initialized():
        return False
    # a local runtime runs its workers at the driver's priority (Ray's default, niceness 15, starves them on a
    # machine shared with other work)
    local = {} if address else {"num_cpus": count, "_system_config": {"worker_niceness": 0}}
    ray.init(address=address, include_dashboard=False, logging_level=logging.ERROR, log_to_driver=False, **local)
    return True


def grid(run: Callable[..., T], cells: Sequence[tuple], count: int | None = None,
         address: str | None = None) -> Iterator[T]:
    """`run(*cell)` of every cell as a plain Ray task of one CPU (a benchmark grid: seeds x settings), yielded
    in the cells' order; a task whose worker process died is run again (RESTARTS times). Ray is started as
    `start` says, and shut down after the last cell when it was started here."""
    started = start(count, address)
    try:
        task = ray.remote(num_cpus=1, max_retries=RESTARTS)(run)
        futures = [task.remote(*cell) for cell in cells]
        for future in futures:
            yield ray.get(future)
    finally:
        if started:
            ray.shutdown()


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
        self.started = start(self.count, self.address)
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

    def fidelity(self, fidelity: Fidelity, model: onnx.ModelProto) -> SharedFidelity:
        """Hand the actors a Fidelity whose engine runs `model` (the teacher, its weights baked in)."""
        self.visits += 1
        return SharedFidelity(self.actors, self.visits, fidelity, model)

    def pids(self) -> list[int]:
        return ray.get([a.pid.remote() for a in self.actors])

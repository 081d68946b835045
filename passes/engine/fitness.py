"""The fitness engine: one long-lived ORT session per model structure, weights fed as inputs.

Passes ask "how far is this candidate from the teacher?" and never touch ONNX Runtime. The target
weights are turned into graph inputs once, so a candidate weight set costs one run and no session
rebuild; the teacher's outputs on the calibration set are computed once, from the original model with
its weights baked in.
"""
from __future__ import annotations

import os
import warnings
from collections.abc import Mapping, Sequence

import numpy as np
import onnx
import onnxruntime as ort

from evonnx.errors import CalibrationError, EvonnxError, ModelError
from evonnx.passes.engine import providers as prov
from evonnx.passes.engine import samples
from evonnx.passes.engine.calib import CalibData, fixed_batch
from evonnx.passes.engine.metrics import Metrics, compare
from evonnx.passes.engine.session import inference_session
from evonnx.passes.engine.tasks import output_groups
from evonnx.runtime.weights import read_weights

DEFAULT_BATCH = 256
BATCH_BYTES = 512 << 20  # ONNX Runtime's working memory a default batch may take (1024 x 1024 U-Net: ~400 MiB a sample)
RUN_ERRORS = tuple(getattr(ort.capi.onnxruntime_pybind11_state, n) for n in
                   ("Fail", "InvalidArgument", "RuntimeException", "NotImplemented", "InvalidGraph"))
THREADS_ENV = "EVONNX_ORT_THREADS"  # intra-op threads per session (unset or 0: ONNX Runtime's default)


def expose_weights(model: onnx.ModelProto, names: Sequence[str]) -> onnx.ModelProto:
    """A copy of `model` where the named main-graph initializers are graph inputs instead."""
    wanted = set(names)
    out = onnx.ModelProto()
    out.CopyFrom(model)
    kept, exposed = [], []
    for tensor in out.graph.initializer:
        (exposed if tensor.name in wanted else kept).append(tensor)
    missing = wanted - {t.name for t in exposed}
    if missing:
        raise ModelError(f"cannot expose {sorted(missing)[:3]}: not main-graph initializers")
    del out.graph.initializer[:]
    out.graph.initializer.extend(kept)
    out.graph.input.extend(onnx.helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in exposed)
    return out


class Runner:
    """Run one ONNX model repeatedly: numpy feeds on CPU; on CUDA, device-resident inputs via IO binding."""

    def __init__(self, model: onnx.ModelProto, providers: list[str], label: str = "model",
                 weights: dict[str, np.ndarray] | None = None, take: bool = False,
                 held: Mapping[str, np.ndarray] | None = None):
        """`weights`: main-graph initializers to run with other values (the model is not copied); `held`: the
        values of those the graph holds outside it (ModelState.held); `take`: the caller drops `model` after
        this, so its large tensors may be moved out (session.inference_session)."""
        options = ort.SessionOptions()
        options.log_severity_level = 4  # failures surface as exceptions; a probe that may fail must not print
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        threads = os.environ.get(THREADS_ENV, "0")
        if not threads.isdigit():
            raise EvonnxError(f"{THREADS_ENV}={threads!r}: expected a number of threads")
        options.intra_op_num_threads = int(threads)
        try:
            self.session = inference_session(model, options, providers, weights, take, held)
        except ModelError:  # a weight that does not fit the model, named
            raise
        except Exception as exc:  # noqa: BLE001 - ORT raises several unrelated types for bad models
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
            raise ModelError(f"{label}: onnxruntime {ort.__version__} cannot run this model "
                             f"(IR {model.ir_version}, opsets {_opsets(model)}): {first}") from None
        self.provider = self.session.get_providers()[0]
        self.on_cuda = self.provider == prov.CUDA
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.label = label
        self._device_values: dict[str, ort.OrtValue] = {}

    def pin(self, name: str, array: np.ndarray) -> None:
        """Keep an input that rarely changes on the device (CUDA only; a no-op on CPU)."""
        if self.on_cuda:
            self._device_values[name] = ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(array), "cuda", 0)

    def run(self, feeds: dict[str, np.ndarray | str], outputs: list[str] | None = None) -> list[np.ndarray]:
        """Run with numpy arrays, or on CUDA with names of pinned values (a str value names a pinned array);
        `outputs` picks some of the outputs (default: all)."""
        outputs = self.output_names if outputs is None else outputs
        try:
            return self.session.run(outputs, feeds) if not self.on_cuda else self._run_bound(feeds, outputs)
        except RUN_ERRORS as exc:  # a model that loads but cannot run: one line naming ORT's node and reason
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
            raise ModelError(f"{self.label}: onnxruntime {ort.__version__} failed running the model: {first}") from None

    def _run_bound(self, feeds: dict[str, np.ndarray | str], outputs: list[str]) -> list[np.ndarray]:
        binding = self.session.io_binding()
        for name, value in feeds.items():
            if isinstance(value, str):
                binding.bind_ortvalue_input(name, self._device_values[value])
            else:
                binding.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(value), "cuda", 0))
        for name in outputs:
            binding.bind_output(name, "cuda")
        self.session.run_with_iobinding(binding)
        return binding.copy_outputs_to_cpu()


def output_axes(runner: Runner, calib: CalibData, batch: int | None, extra: dict | None = None) -> list[samples.Axis]:
    """Where each of the runner's outputs carries samples: measured on one sample and on it twice, or, for a
    model with a fixed batch, axis 0 where an output has the batch's size."""
    extra = extra or {}
    if batch is not None:
        return samples.fixed_batch_axes(runner.run({**calib.feed(0, batch), **extra}), batch)
    one, two = calib.pair()
    return samples.measured_axes(runner.run({**one, **extra}), runner.run({**two, **extra}))


def axes_and_sample_bytes(runner: Runner, calib: CalibData) -> tuple[list[samples.Axis], int]:
    """`output_axes` of a model without a fixed batch, and what running a sample twice adds to this process's
    resident memory over running it once: about a sample's share of ONNX Runtime's working memory, which grows
    with the batch and stays in its arena (0 where it cannot be read)."""
    one, two = calib.pair()
    first = runner.run(one)
    before = resident_bytes()
    second = runner.run(two)
    after = resident_bytes()
    grown = after - before if before is not None and after is not None else 0
    return samples.measured_axes(first, second), max(grown, 0)


def resident_bytes() -> int | None:
    """This process's resident memory (Linux's /proc), None where it cannot be read."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def run_batches(runner: Runner, feeds: list[dict], axes: list[samples.Axis],
                outputs: list[str] | None = None) -> list[np.ndarray]:
    """Run every batch and join each output (of `outputs`, default all) along its sample axis, one output at a
    time, its batches' parts let go once joined: the peak is the parts and one joined output, not twice all."""
    parts = [runner.run(feed, outputs) for feed in feeds]
    joined = []
    for k in range(len(parts[0])):
        joined.append(samples.join([p[k] for p in parts], axes[k]))
        for p in parts:
            p[k] = None
    return joined


def _opsets(model: onnx.ModelProto) -> str:
    return ", ".join(f"{o.domain or 'ai.onnx'}:{o.version}" for o in model.opset_import)


class FitnessEngine:
    """Evaluate candidate weight sets against the teacher on calibration data.

    `weights`: the names fed as inputs (default: every float main-graph initializer the caller lists,
    usually the sparsification targets). A candidate is a dict {name: array}; weights it leaves out keep
    their original values, `original` when the caller holds them already (read from the model otherwise).
    `held`: the values of the initializers the model holds outside its graph (passes.state.ModelState.held).
    """

    def __init__(self, model: onnx.ModelProto, calib: CalibData, weights: Sequence[str], *,
                 device: str = "auto", batch_size: int | None = None, label: str = "model",
                 original: dict[str, np.ndarray] | None = None, held: Mapping[str, np.ndarray] | None = None):
        self.label = label
        self.calib = calib
        self.weight_names = list(weights)
        self.held = held
        self.original = original if original is not None else read_weights(model, self.weight_names, held)
        self.providers = providers = prov.resolve(device)
        fixed = fixed_batch(model, calib.axes, label)
        baked = Runner(model, providers, label, self.original, held=held)  # the arrays held already, no copy
        self.output_names = baked.output_names
        self.axes, sample = (output_axes(baked, calib, fixed), 0) if fixed else axes_and_sample_bytes(baked, calib)
        self.batch_size = self._batch_size(fixed, calib, batch_size, sample)
        self.batches = calib.batches(self.batch_size)
        self.teacher = self._collect(baked, self.batches)
        self.student = (Runner(expose_weights(model, self.weight_names), providers, label, held=held)
                        if self.weight_names else baked)
        self.provider = self.student.provider
        for i, batch in enumerate(self.batches):
            for name, arr in batch.items():
                self.student.pin(f"batch{i}:{name}", arr)
        for name, arr in self.original.items():
            self.student.pin(f"weight:{name}", arr)
        self.evaluations = 0
        self.groups: list[np.ndarray | None] | None = None  # each output's error groups (see `balance`)
        self._balanced_for = None

    def balance(self, metric) -> None:
        """Take the error groups of the task metric `metric` (passes/engine/tasks.py) into the relative MSE of
        every later comparison (None: one group per output)."""
        if metric is not self._balanced_for:
            self.groups = output_groups(metric, self.teacher, self.axes)
            self._balanced_for = metric

    def _batch_size(self, fixed: int | None, calib: CalibData, requested: int | None, sample: int) -> int:
        """The model's fixed batch; else the one requested, or DEFAULT_BATCH samples but no more than BATCH_BYTES
        of ONNX Runtime's working memory at `sample` bytes a sample (`axes_and_sample_bytes`)."""
        if fixed:
            size = fixed
            usable = calib.num_samples - calib.num_samples % size
            if usable == 0:
                raise CalibrationError(f"{self.label}: the model's batch is {size} but calibration has "
                                       f"{calib.num_samples} samples")
            if usable != calib.num_samples:
                warnings.warn(f"using {usable} of {calib.num_samples} calibration samples (fixed batch {size})",
                              stacklevel=3)
                calib.inputs = calib.feed(0, usable)
                calib.labels = None if calib.labels is None else calib.labels[:usable]
            return size
        default = max(1, min(DEFAULT_BATCH, BATCH_BYTES // sample)) if sample else DEFAULT_BATCH
        return min(requested or default, calib.num_samples)

    def _collect(self, runner: Runner, feeds: list[dict]) -> list[np.ndarray]:
        return run_batches(runner, feeds, self.axes)

    def outputs(self, candidate: dict[str, np.ndarray] | None = None) -> list[np.ndarray]:
        """The student's outputs on all calibration batches for one candidate."""
        candidate = candidate or {}
        unknown = set(candidate) - set(self.original)
        if unknown:
            raise ModelError(f"{self.label}: {sorted(unknown)[:3]} are not exposed weights of the engine")
        feeds = []
        for i, batch in enumerate(self.batches):
            if self.student.on_cuda:
                feed = {name: f"batch{i}:{name}" for name in batch}
                feed.update({name: f"weight:{name}" for name in self.original})
            else:
                feed = dict(batch)
                feed.update(self.original)
            feed.update(candidate)
            feeds.append(feed)
        self.evaluations += 1
        return self._collect(self.student, feeds)

    def run_on(self, data: CalibData, candidate: dict[str, np.ndarray] | None = None) -> list[np.ndarray]:
        """The student's outputs on other data (a held-out test set), batched, nothing cached."""
        weights = {**self.original, **(candidate or {})}
        feeds = [{**batch, **weights} for batch in data.batches(self.batch_size)]
        return self._collect(self.student, feeds)

    def accuracy(self, data: CalibData, candidate: dict[str, np.ndarray] | None = None) -> float:
        """Top-1 accuracy of the first output against `data.labels`."""
        if data.labels is None:
            raise CalibrationError(f"{data.source}: no labels to measure accuracy")
        return float(np.mean(self.run_on(data, candidate)[0].argmax(-1) == data.labels))

    def evaluate(self, candidates: Sequence[dict[str, np.ndarray]]) -> list[Metrics]:
        """Metrics of each candidate against the teacher (a batch API: callers pass several at once)."""
        return [compare(self.output_names, self.teacher, self.outputs(c), self.calib.labels, self.groups)
                for c in candidates]

    def fitness(self, candidates: Sequence[dict[str, np.ndarray]]) -> np.ndarray:
        """The scalar to minimise for each candidate."""
        return np.array([m.fitness for m in self.evaluate(candidates)])

    def teacher_metrics(self) -> Metrics:
        """The teacher against itself, with task accuracy when labels exist."""
        return compare(self.output_names, self.teacher, self.teacher, self.calib.labels, self.groups)

    def model_outputs(self, model: onnx.ModelProto, label: str = "student",
                      weights: dict[str, np.ndarray] | None = None) -> list[np.ndarray]:
        """Outputs of another model (same inputs and outputs, any structure; with `weights` in place of
        its initializers of those names; a graph that holds its weights outside takes the engine's `held`)
        on the calibration batches."""
        return self.runner_outputs(Runner(model, self.providers, label, weights, held=self.held))

    def runner_outputs(self, runner: Runner) -> list[np.ndarray]:
        """Outputs of another model's runner on the calibration batches (one session, several engines)."""
        if runner.output_names != self.output_names:
            raise ModelError(f"{runner.label}: outputs {runner.output_names} differ from the teacher's "
                             f"{self.output_names}")
        return self._collect(runner, self.batches)

    def compare_model(self, model: onnx.ModelProto, label: str = "student") -> Metrics:
        """Metrics of another model against the teacher."""
        return compare(self.output_names, self.teacher, self.model_outputs(model, label), self.calib.labels,
                       self.groups)

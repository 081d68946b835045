"""Apply a per-layer plan {weight: QuantSpec} to a state: records, simulated weights, a report row each.

Shared by the `quantize` pass (one spec for every layer, with overrides) and `bit-allocation` (the
searched plan). Non-target tensors stay exact, or are rounded to fp16/bf16 only when asked.
"""
from __future__ import annotations

import itertools
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np

from evonnx.errors import EvonnxError
from evonnx.formats.dtypes import np_dtype
from evonnx.formats.tensor import QuantizedTensor, dequantize
from evonnx.passes.engine.metrics import Metrics, compare, is_classifier
from evonnx.passes.engine.tasks import Cosine, Drop, TaskMetric, per_sample, real_tokens
from evonnx.passes.quant.gptq import Factor, act_order, compensated_codes, inverse_factor
from evonnx.passes.quant.layer import QuantSpec, Quantized, quantize_weight, survivors
from evonnx.passes.quant.refit import gram_matrices, layer_views, refit_centroids
from evonnx.passes.quant.sizing import coded_bytes
from evonnx.passes.quant.spill import Spill
from evonnx.passes.quant.uniform import chunks
from evonnx.passes.quant.tables import table_grams, table_views
from evonnx.passes.state import ModelState

Nontarget = Literal["exact", "fp16", "bf16", "int8"]  # how biases, norms and small tensors are stored
NONTARGET = get_args(Nontarget)
INT8 = QuantSpec.parse("uniform/tensor/asym", 8)
POWER_BLOCK = 1 << 20  # entries of a weight whose error power is summed at a time (float64 temporaries)
HELD_SHARE = 0.5  # of the weights' bytes: the Grams and factors a bit allocation holds in memory, the rest in files
MIN_HELD = 64 << 20
_SCOPES = itertools.count()


def spill_for(state: ModelState) -> Spill:
    """The store of one bit allocation's Grams and factors: HELD_SHARE of the weights' bytes in memory, MIN_HELD
    at least."""
    return Spill(max(MIN_HELD, int(HELD_SHARE * 4 * sum(w.size for w in state.table))))


class Quantizer:
    """Quantize weights of one state under any spec; keeps the layers' Grams (codebook re-fit, GPTQ, error
    power) and GPTQ's inverse factors in a `Spill` (passes/quant/spill.py), shared by the quantizers of one bit
    allocation: beyond its budget they wait in files."""

    def __init__(self, state: ModelState, engine, max_rows: int = 4096, seed: int = 0,
                 task: TaskMetric | None = None, keep: dict[str, np.ndarray] | None = None,
                 store: Spill | None = None):
        self.state, self.engine, self.max_rows, self.seed = state, engine, max_rows, seed
        self.pool = task.pool if isinstance(task, Cosine) else ""  # what the tables' Grams probe
        self.store = store if store is not None else spill_for(state)
        self.scope = next(_SCOPES)  # this quantizer's keys in a shared store
        self.views = None
        self.keys: dict[str, Hashable] = {}  # each weight's Gram in the store (one for the weights of one input)
        self.measured = False  # whether the Grams were computed
        self.rows: dict[str, int] = {}  # the calibration rows each matrix layer's Gram was summed over
        self.parts: list[Quantizer] = []  # a pooled quantizer's parts (see `pooled`)
        self.hold = True  # whether a pooled quantizer keeps the sums it makes
        self.keep = keep if keep is not None else {n: survivors(state.current(n), state.masks.get(n))
                                                   for n in state.targets}

    @classmethod
    def pooled(cls, parts: list["Quantizer"], hold: bool = True) -> "Quantizer":
        """A quantizer whose Grams and their row counts are the sums of `parts`' (quantizers of one state on
        disjoint calibration samples: the Grams of those samples together), for every weight all parts have a
        Gram of; a sum is made at its first need, and kept only with `hold` (else made again at each)."""
        first = parts[0]
        pooled = cls(first.state, None, first.max_rows, first.seed, keep=first.keep, store=first.store)
        pooled.pool, pooled.parts, pooled.hold = first.pool, parts, hold
        return pooled

    def can_refit(self, name: str) -> bool:
        self._ensure_views()
        if name in self.views and self.views[name].kind == "table":
            self._ensure_grams()  # only a measured Gram makes a table's view
        return name in self.views

    def _ensure_views(self) -> None:
        if self.views is None and self.parts:
            self._ensure_grams()
        elif self.views is None:
            self.views = {**layer_views(self.state, self.state.targets), **table_views(self.state, self.state.targets)}

    def _ensure_grams(self) -> None:
        """Every view's Gram, at the first need (one activation pass for the matrices, one probe pass for the
        tables); a table without one (torchnet cannot run the graph) loses its view: rounded to nearest. A pooled
        quantizer takes its views, keys and rows from its parts'."""
        if self.measured:
            return
        self.measured = True
        if self.parts:
            for part in self.parts:
                part._ensure_views()
                part._ensure_grams()
            common = [n for n in self.parts[0].keys if all(n in p.keys for p in self.parts)]
            self.views = {n: self.parts[0].views[n] for n in common}
            self.keys = {n: (self.scope, tuple(p.keys[n] for p in self.parts)) for n in common}
            self.rows = {n: sum(p.rows[n] for p in self.parts) for n in common if all(n in p.rows for p in self.parts)}
            return
        self._ensure_views()
        tables = {n: v for n, v in self.views.items() if v.kind == "table"}
        matrices = {n: v for n, v in self.views.items() if n not in tables}
        self.keys, self.rows = gram_matrices(self.state, self.engine, matrices, self.store, self.scope,
                                             self.max_rows, self.seed)
        for name, gram in table_grams(self.state, self.engine, tables, self.seed, self.pool).items():
            self.keys[name] = (self.scope, "table", name)
            self.store[self.keys[name]] = (gram,)
        for name in tables.keys() - self.keys.keys():
            del self.views[name]

    def gram(self, name: str) -> np.ndarray | None:
        """`name`'s Gram once measured (None where it has none); a pooled one summed from the parts' at need."""
        key = self.keys.get(name)
        if key is None:
            return None
        if key in self.store:
            return self.store[key][0]
        total = self.parts[0].gram(name).copy()
        for part in self.parts[1:]:
            total += part.gram(name)
        if self.hold:
            self.store[key] = (total,)
        return total

    def factor(self, name: str) -> tuple[np.ndarray, Factor]:
        """GPTQ's column order (act-order) and inverse factor of `name`'s Gram, made at the first need (one for
        the weights sharing the Gram): inverting a K x K Gram costs more than a rounding it serves."""
        key = ("factor", self.keys[name])
        if key not in self.store:
            gram = self.gram(name)
            order = act_order(gram)
            self.store[key] = (order, *inverse_factor(gram[np.ix_(order, order)], self.rows.get(name)).strips)
        order, *strips = self.store[key]
        return order, Factor(strips)

    def quantize(self, name: str, spec: QuantSpec) -> Quantized:
        """`name` under `spec`; a re-fit or compensated spec falls back to plain where the weight has no
        matrix view (or, per channel, its channels are not the view's rows)."""
        array, info = self.state.current(name), self.state.table[name]
        refit = compensate = None
        if spec.refit and self.can_refit(name):
            self._ensure_grams()
            layer, keep = self.views[name], self.keep[name]
            if spec.scheme == "codebook":
                def refit(codes, centroids, gram=self.gram(name)):
                    return refit_centroids(layer, gram, array, keep, codes, centroids)
            elif not spec.per_channel or info.channel_axis == layer.row_axis:
                def compensate(scale, zero, top, factor=self.factor(name)):
                    rows = (layer.out,)
                    codes = compensated_codes(layer.to_mat(array), layer.to_mat(keep), factor[1],
                                              np.broadcast_to(scale, rows), np.broadcast_to(zero, rows), top,
                                              factor[0])
                    return layer.from_mat(codes)
        return quantize_weight(name, array, self.keep[name], spec, info.channel_axis, refit, compensate)

    def error_power(self, name: str, weight: np.ndarray) -> float:
        """How far `weight` moves the layer from the incoming one: its output error's power on the calibration
        activations, sum((dW H) * dW) over the matrix view, once the Gram H is known; else the weight error's."""
        gram, current = self.gram(name), self.state.current(name)
        if gram is None:
            a, b, parts = weight.reshape(-1), current.reshape(-1), chunks(weight.size, POWER_BLOCK)
        else:  # blocks of rows of the matrix view
            a, b = self.views[name].to_mat(weight), self.views[name].to_mat(current)
            parts = chunks(a.shape[0], max(1, POWER_BLOCK // a.shape[1]))
        total = 0.0
        for part in parts:
            d = a[part].astype(np.float64) - b[part]
            total += float(np.vdot(d, d) if gram is None else np.vdot(d @ gram, d))
        return total


def row(q: Quantized, spec: QuantSpec, original: np.ndarray) -> dict:
    """The report row of one quantized weight (sizes estimated, error against the incoming weight)."""
    size = coded_bytes(q.tensor)
    scheme = "raw (fallback)" if q.fallback else spec.family if q.tensor.scheme == spec.scheme else "raw (empty)"
    return {"name": q.tensor.name, "scheme": scheme,
            "bits": q.tensor.bits, "est_bytes": round(size["total"], 1), "codes_bytes": round(size["codes"], 1),
            "mask_bytes": round(size["mask"], 1), "side_bytes": round(size["side"], 1),
            "kept": q.tensor.n_kept, "size": q.tensor.size,
            "rel_error": rel_error(q.weight, original), "bumped": q.bumped}


def rel_error(weight: np.ndarray, original: np.ndarray) -> float:
    """||weight - original|| / ||original|| in float64, a block of CHUNK entries at a time (0 for a zero original)."""
    err = norm = 0.0
    a, b = weight.reshape(-1), original.reshape(-1)
    for part in chunks(a.size):
        o = b[part].astype(np.float64)
        d = a[part] - o
        err, norm = err + float(d @ d), norm + float(o @ o)
    return float(np.sqrt(err / norm)) if norm else 0.0


def round_nontarget(state: ModelState, name: str, mode: str) -> tuple[QuantizedTensor, np.ndarray]:
    """A float tensor rounded to fp16/bf16 (values kept in the tensor's dtype, as the record's contract
    has no separate storage dtype: the record is raw in the original dtype, holding the rounded values),
    or quantized to 8 bits (`int8`: uniform, per tensor, asymmetric; zeros stay exactly zero)."""
    if mode not in NONTARGET[1:]:
        raise EvonnxError(f"nontarget must be one of {NONTARGET}, got {mode!r}")
    array = state.current(name)
    if mode == "int8":
        q = quantize_weight(name, array, survivors(array, None), INT8, None)
        return q.tensor, q.weight
    low = np_dtype("float16" if mode == "fp16" else "bfloat16")
    rounded = array.astype(low).astype(array.dtype)
    t = QuantizedTensor.raw(name, rounded)
    return t, dequantize(t)


def nontargets(state: ModelState, exclude: set[str]) -> list[str]:
    """Float tensors the plan leaves alone: biases, norms, small or non-target weights."""
    return [w.name for w in state.table if w.name not in exclude]


def rounded_nontargets(state: ModelState, exclude: set[str], mode: str) -> dict[str, np.ndarray]:
    """The values of every non-target float tensor (see `nontargets`) rounded as `mode` says ({} when exact)."""
    return {} if mode == "exact" else {n: round_nontarget(state, n, mode)[1] for n in nontargets(state, exclude)}


@dataclass
class Measure:
    """One candidate against the incoming model: its metrics, and on the labelled classifier output the
    calibration samples it turns from right to wrong (`lost`) and from wrong to right (`gained`)."""

    metrics: Metrics
    lost: int = 0
    gained: int = 0
    n: int = 0
    task: Drop | None = None  # the run's task metric against the incoming model, when it has one

    def accuracy_drop(self, z: float) -> float:
        """Accuracy points lost, plus z standard errors of that paired difference (McNemar: the
        variance of (lost - gained) / n is about (lost + gained) / n^2)."""
        if self.n == 0:
            return 0.0
        return 100.0 * (self.lost - self.gained + z * np.sqrt(self.lost + self.gained)) / self.n

    @property
    def damage(self) -> float:
        """What the searches add up over layers: the task's mean drop where the task is a cosine (quadratic in
        small output errors, as KL is, and read where the user reads it: pooled outputs under `cosine:mean`),
        else KL (rel. MSE) of the outputs, smooth where accuracy, detections or strings change in steps."""
        if self.task is not None and self.task.metric.startswith("cosine"):
            return self.task.points
        return self.metrics.fitness


class Fidelity:
    """Candidates measured against the incoming student's outputs (not the teacher's): quantization
    must keep what the sparsification produced. fitness = KL(incoming || candidate) (or rel. MSE),
    top1 = agreement with the incoming student's top-1, accuracy = against the calibration labels."""

    def __init__(self, engine, base: dict[str, np.ndarray], task: TaskMetric | None = None):
        self.engine, self.base, self.task = engine, base, task
        self.labels, self.tokens = engine.calib.labels, real_tokens(engine.calib)
        self.reference = engine.outputs(base)
        self.samples = per_sample(self.reference, engine.axes)
        self.head = next((i for i, t in enumerate(self.reference) if is_classifier(t) and self.labels is not None
                          and len(self.labels) == len(t)), None)
        self.start = self.measure(self.reference).metrics

    def measure(self, outputs: list[np.ndarray]) -> Measure:
        """A candidate's outputs against the incoming model's."""
        metrics = compare(self.engine.output_names, self.reference, outputs, self.labels, self.engine.groups)
        task = None if self.task is None else self.task.drop(self.samples, per_sample(outputs, self.engine.axes),
                                                             self.labels, self.tokens)
        if self.head is None:
            return Measure(metrics, task=task)
        was = self.reference[self.head].argmax(-1) == self.labels
        now = outputs[self.head].argmax(-1) == self.labels
        return Measure(metrics, int(np.sum(was & ~now)), int(np.sum(~was & now)), len(self.labels), task)

    def evaluate(self, changes: list[dict[str, np.ndarray]]) -> list[Measure]:
        """The incoming weights with each dict of `changes` applied, measured."""
        return [self.measure(self.engine.outputs({**self.base, **c})) for c in changes]

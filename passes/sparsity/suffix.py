"""Cheap candidate evaluation: cached layer inputs, a numpy delta for the changed layer, a baked suffix.

A candidate zeroes a set of entries of one layer L. Its output is Y_cur + dY, where dY is a sparse
product of L's cached inputs with the zeroed values (cost rows x |set|, candidates sharing entries share
that work). dY feeds a sub-model holding only the nodes downstream of L with the student's current
weights baked in (so ORT's constant-weight optimisations apply), built once per layer visit, and several
candidates are stacked along the batch axis into one run. Weights without a matrix view fall back to a
full forward pass with weights as inputs.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from evonnx.passes.engine import samples
from evonnx.passes.engine.calib import CalibData, fixed_batch
from evonnx.passes.engine.fitness import Runner, run_batches
from evonnx.passes.engine.metrics import error_weights, is_classifier, is_probability, log_probs
from evonnx.passes.engine.tasks import output_groups
from evonnx.passes.sparsity.graph import build_probe, build_suffix, elem_types, suffix_structure
from evonnx.passes.sparsity import tokens
from evonnx.passes.sparsity.layers import Layer
from evonnx.passes.state import ModelState

STACK_BYTES = 32 << 20  # most bytes of stacked suffix inputs per run (ORT holds a few times that; 96 MiB cost
# cnn-25M 1061 MiB at its peak against 783, at the same cost a candidate: tools/bench/RESULTS.md)
CHUNK_ELEMENTS = 4 << 20  # gather chunk of the sparse delta product
REFIT_ROWS = 16384  # most activation rows used to re-fit one layer
POOL_CACHE_ELEMENTS = 32 << 20  # most gathered activation elements cached for a search pool
MEASURE_GROUP = 8  # probe outputs measured together at first
MEASURE_BYTES = 1 << 30  # then as many as hold about this many bytes on one sample and on two
ACTIVATION_BYTES = 2 << 30  # most bytes of cached activations (every layer's input and output) on the re-fit samples
# what scoring a visit's pool candidates reads, of an Evaluator and of a LayerView (see scoring_copy)
EVALUATOR_SCORING = ("teacher_out", "out_weights", "output_names", "axes", "per", "n_fit", "batch", "stackable_batch",
                     "providers", "label")
VIEW_SCORING = ("layer", "w_mat", "out", "k", "const_out", "y_shape", "x_t", "y_flat")


def fitness_batch(teacher: list[np.ndarray], student: list[np.ndarray],
                  weights: list[np.ndarray | float | None] | None = None) -> np.ndarray:
    """Per-candidate fitness, the engine's definition: mean KL over classifier outputs, else mean relative
    MSE (integer outputs: mismatch rate). `student` arrays carry a leading candidate axis; `weights` (per
    output, None: the plain relative MSE) are the output's `metrics.error_weights` (real tokens, error
    groups)."""
    kls, mses = [], []
    for t, s, w in zip(teacher, student, weights or [None] * len(teacher)):
        if not np.issubdtype(t.dtype, np.floating):
            mses.append(np.mean((s != t[None]).reshape(len(s), -1), axis=1))
        elif is_classifier(t):
            probs = is_probability(t)
            lt, ls = log_probs(t[None], probs), log_probs(s, probs)
            kls.append(np.mean(np.sum(np.exp(lt) * (lt - ls), axis=-1), axis=-1))
        else:
            w = error_weights(t) if w is None else w
            diff = s.astype(np.float64) - t.astype(np.float64)[None]
            mses.append(np.sum((diff * diff * w).reshape(len(s), -1), axis=1))
    return np.mean(kls, axis=0) if kls else np.mean(mses, axis=0)


def sparse_rows(x_t: np.ndarray, groups: np.ndarray, cols: np.ndarray, vals: np.ndarray, n_groups: int) -> np.ndarray:
    """out[g] = sum over entries e with groups[e] == g of vals[e] * x_t[cols[e]]  ->  [n_groups, rows]."""
    out = np.zeros((n_groups, x_t.shape[1]), np.float32)
    if len(groups) == 0:
        return out
    order = np.argsort(groups, kind="stable")
    groups, cols, vals = groups[order], cols[order], vals[order].astype(np.float32)
    step = max(1, CHUNK_ELEMENTS // max(x_t.shape[1], 1))
    for start in range(0, len(groups), step):  # chunks of entries, each a vectorised gather-reduce
        g, c, v = groups[start:start + step], cols[start:start + step], vals[start:start + step]
        heads = np.flatnonzero(np.r_[True, g[1:] != g[:-1]])
        out[g[heads]] += np.add.reduceat(x_t[c] * v[:, None], heads, axis=0)
    return out


@dataclass
class Counter:
    evaluations: int = 0
    seconds: float = 0.0
    by_layer: dict = field(default_factory=dict)


class Evaluator:
    """Evaluates candidate zero-sets layer by layer against the teacher on a calibration subset."""

    def __init__(self, state: ModelState, layers: list[Layer], calib: CalibData, providers: list[str],
                 fitness_samples: int = 256, refit_samples: int = 1024, batch_size: int = 256, workers=None,
                 metric=None):
        """`metric`: the run's task metric (passes/engine/tasks.py), whose error groups the fitness takes."""
        self.state, self.layers, self.providers = state, {l.weight: l for l in layers}, providers
        self.label = state.label
        self.workers = workers  # a distributed.Workers: pool candidates are scored on its actors
        n = calib.num_samples
        self.n_fit, self.n_refit = min(fitness_samples, n), min(max(refit_samples, fitness_samples), n)
        fixed = fixed_batch(state.model, calib.axes, state.label)
        self.batch = fixed or batch_size
        self.stackable_batch = fixed is None
        self.data = calib.subset(self.n_refit)
        self.types = elem_types(state.model)
        self.exposed = [l.weight for l in layers] + [l.bias for l in layers if l.bias]
        self.suffix_inputs = {l.weight: suffix_structure(state.model, l.y)[1] for l in layers if l.fast}
        extra = [l.x for l in layers if l.fast] + [n for ins in self.suffix_inputs.values() for n in ins]
        self.probe = Runner(build_probe(state.model, self.exposed, list(dict.fromkeys(extra)), self.types),
                            providers, state.label, held=state.held)
        self.output_names = [o.name for o in state.model.graph.output]
        self.counter = Counter()
        original = {n: state.original(n) for n in self.exposed}
        self._measure(original, fixed)
        self.tokens = tokens.token_keep(self.data.inputs, self.data.axes)
        acts = self.run_probe(original, names=self.output_names + [l.y for l in layers if l.fast])
        self.teacher_out = [self.take(acts, o, self.n_fit) for o in self.output_names]
        groups = output_groups(metric, self.teacher_out, [self.axes[o] for o in self.output_names])
        self.out_weights = [error_weights(t, g, self._output_keep(o, t))
                            for o, t, g in zip(self.output_names, self.teacher_out, groups)]
        self.teacher_y = {l.weight: acts[l.y] for l in layers if l.fast}
        self.forward_at_start = self.forward_seconds()

    def _measure(self, weights: dict[str, np.ndarray], fixed: int | None) -> None:
        """Every cached value's sample axis (`self.axes`) and entries per sample on it (`self.per`: tokens
        folded into the batch), measured on as many probe outputs at a time as the last group's bytes say fit
        MEASURE_BYTES (all of them for even two samples may not fit in memory; each group costs two forward
        passes: 8 at a time took 52 s of a 60 s limit on a 1024 x 1024 U-Net), and fewer re-fit (and fitness)
        samples when the cached activations of all of them would pass ACTIVATION_BYTES. A fixed batch is
        measured on two batches (one when there is no second): a value that differs between them carries samples
        even without a batch-sized axis."""
        names = self.probe.output_names
        if fixed:
            one = self.data.feed(0, fixed)
            two = self.data.feed(fixed, 2 * fixed) if self.data.num_samples >= 2 * fixed else None
        else:
            one, two = self.data.pair()
        axes: dict[str, samples.Axis] = {}
        self.per: dict[str, int] = {}
        per_sample, start, size = 0.0, 0, MEASURE_GROUP
        while start < len(names):
            group = names[start:start + size]
            first = self.probe.run({**one, **weights}, group)
            second = self.probe.run({**two, **weights}, group) if two is not None else None
            got = (samples.fixed_batch_axes(first, fixed, second) if fixed else samples.measured_axes(first, second))
            axes.update(zip(group, got))
            self.per.update(zip(group, samples.rows_per_sample(first, got, fixed or 1)))
            per_sample += sum(o.nbytes for o, axis in zip(first, got) if axis is not None) / (fixed or 1)
            held = sum(o.nbytes for o in first) + sum(o.nbytes for o in second or ())
            start, size = start + len(group), max(1, int(len(group) * MEASURE_BYTES / max(held, 1)))
        self.axes = {**axes, **self.data.axes}
        self.per.update({name: 1 for name in self.data.axes})
        cap = max(fixed or 1, int(ACTIVATION_BYTES // max(per_sample, 1.0)))
        if cap < self.n_refit:
            self.n_refit, self.n_fit = cap, min(self.n_fit, cap)
            self.data = self.data.subset(cap)

    def run_probe(self, weights: dict[str, np.ndarray], n: int | None = None,
                  names: list[str] | None = None) -> dict[str, np.ndarray]:
        """Probe outputs (graph outputs and cached activations; only `names` when given, so that one visit
        holds only what it needs) for the first n samples, with the inputs."""
        n = self.n_refit if n is None else n
        names = list(self.probe.output_names if names is None else dict.fromkeys(names))
        names = [name for name in names if name in self.axes and name not in self.data.inputs]
        feeds = [{**self.data.feed(start, min(start + self.batch, n)), **weights} for start in range(0, n, self.batch)]
        out = dict(zip(names, run_batches(self.probe, feeds, [self.axes[name] for name in names], names)))
        out.update(self.data.feed(0, n))
        return out

    def take(self, acts: dict[str, np.ndarray], name: str, n: int, start: int = 0) -> np.ndarray:
        """Samples [start, n) of a cached value (the whole value when it has no sample axis)."""
        return self.slice(acts[name], name, start, n)

    def slice(self, arr: np.ndarray, name: str, start: int, stop: int) -> np.ndarray:
        """Samples [start, stop) of `arr`, a value shaped like the one named `name`."""
        return samples.take(arr, self.axes[name], start, stop, self.per.get(name, 1))

    def rows(self, name: str, lead: tuple[int, ...], n: int) -> np.ndarray | None:
        """Flat bool over the rows of the value `name` shaped [*lead, features] on n samples: True at real
        tokens (None: every row counts; see tokens.py)."""
        keep = None if self.tokens is None else self.tokens[:n]
        return tokens.row_keep(lead, self.axes.get(name), self.per.get(name, 1), keep)

    def layer_rows(self, layer: Layer, x: np.ndarray, n: int) -> np.ndarray | None:
        """`rows` of layer.x_mat(x), x being the layer's input on n samples (convolutions: every row)."""
        return None if layer.kind == "conv" or layer.trans_a else self.rows(layer.x, x.shape[:-1], n)

    def _output_keep(self, name: str, teacher: np.ndarray) -> np.ndarray | None:
        keep = self.rows(name, teacher.shape[:-1], self.n_fit)
        return None if keep is None else keep.reshape(*teacher.shape[:-1], 1)

    def scoring_copy(self) -> "Evaluator":
        """What scoring candidates reads, without the model, the probe or the calibration data."""
        ev = object.__new__(Evaluator)
        ev.__dict__.update({k: self.__dict__[k] for k in EVALUATOR_SCORING}, counter=Counter(), workers=None)
        return ev

    def current(self, state: ModelState) -> dict[str, np.ndarray]:
        return {n: state.current(n) for n in self.exposed}

    def visit(self, layer: Layer, state: ModelState) -> "LayerView":
        """Cache what candidates of `layer` need, given the student `state` (one probe run, one suffix session)."""
        weights = self.current(state)
        names = self.output_names + ([layer.x, layer.y, *self.suffix_inputs[layer.weight]] if layer.fast else [])
        acts = self.run_probe(weights, self.n_refit if layer.fast else self.n_fit, names)
        return LayerView(self, layer, state, weights, acts)

    def fitness(self, state: ModelState) -> float:
        """Fitness of a whole student state on the fitness subset (one full forward pass)."""
        acts = self.run_probe(self.current(state), self.n_fit, self.output_names)
        return float(fitness_batch(self.teacher_out, [acts[o][None] for o in self.output_names], self.out_weights)[0])

    def forward_seconds(self, repeats: int = 20, seconds: float = 1.0) -> float:
        """Median time of one baked forward pass of the original model on the fitness subset (up to `repeats`
        runs, fewer once they took `seconds`: a slow model is timed by few runs)."""
        state = self.state
        runner = Runner(state.model, self.providers, state.label, held=state.held)
        feed = self.data.feed(0, self.n_fit if self.stackable_batch else self.batch)
        runner.run(feed)
        times: list[float] = []
        while len(times) < repeats and (len(times) < 2 or sum(times) < seconds):
            t0 = time.perf_counter()
            runner.run(feed)
            times.append(time.perf_counter() - t0)
        scale = 1 if self.stackable_batch else -(-self.n_fit // self.batch)
        return float(np.median(times)) * scale


def _unstack(r: np.ndarray, kc: int, axis: samples.Axis) -> np.ndarray:
    """A suffix output of kc stacked candidates -> [kc, *one candidate's shape], split along its sample axis
    (an output without one is the same for every candidate)."""
    if axis is None:
        return np.broadcast_to(r, (kc, *r.shape))
    moved = np.moveaxis(r, axis, 0)
    return np.moveaxis(moved.reshape(kc, -1, *moved.shape[1:]), 1, axis + 1)


class LayerView:
    """One layer's cached inputs, its current output and its downstream suffix, for one visit."""

    def __init__(self, ev: Evaluator, layer: Layer, state: ModelState, weights: dict, acts: dict):
        self.ev, self.layer = ev, layer
        self.weights = weights
        self.remote = None  # this visit shared with the evaluator's workers
        self.w_mat = layer.to_mat(weights[layer.weight]).astype(np.float32)
        self.out, self.k = self.w_mat.shape
        n = ev.n_fit
        self.const_out = {o: ev.take(acts, o, n) for o in ev.output_names}
        self.acts = acts
        if not layer.fast:
            return
        y = ev.take(acts, layer.y, n)
        self.y_shape = y.shape
        self.row_keep = ev.layer_rows(layer, ev.take(acts, layer.x, n), n)  # the rows of real tokens (None: all)
        self.y_flat = layer.y_flat(y).astype(np.float32)

    @cached_property
    def x_t(self) -> np.ndarray:
        """The layer's inputs on the fitness samples as [K, rows] (a convolution's patches: K / C times its input),
        made at the first need: a visit that only ranks entries needs `x_norms` alone."""
        return self.layer.x_cols(self.ev.take(self.acts, self.layer.x, self.ev.n_fit))

    @cached_property
    def x_norms(self) -> np.ndarray:
        """Each input column's norm over the rows of real tokens (float64), made without `x_t`."""
        return self.layer.col_norms(self.ev.take(self.acts, self.layer.x, self.ev.n_fit), self.row_keep)

    # -- the suffix, built on the first evaluation (re-fit-only visits never build a session) ------------
    @cached_property
    def suffix(self):
        """The sub-model downstream of the layer, with this visit's weights (and the teacher's of those the state
        holds outside its graph) baked in: self-contained, for worker processes too."""
        return build_suffix(self.ev.state.model, self.layer.y, {**self.ev.state.held, **self.weights}, self.ev.types)

    @cached_property
    def side(self) -> dict[str, np.ndarray]:
        """The suffix's other inputs (activations from outside the layer's path), fixed for the visit."""
        return {k: self.ev.take(self.acts, k, self.ev.n_fit) for k in self.suffix.inputs[1:]}

    @cached_property
    def runner(self) -> Runner | None:
        model = self.suffix.model
        return Runner(model, self.ev.providers, self.ev.label) if model is not None else None

    @cached_property
    def stack(self) -> int:
        return self._check_stacking()

    def scoring_copy(self) -> "LayerView":
        """A copy holding what evaluate_members needs (the suffix built, no ORT session, no probe activations), to
        ship to worker processes once per visit."""
        view = object.__new__(LayerView)
        view.__dict__.update({k: getattr(self, k) for k in VIEW_SCORING}, ev=self.ev.scoring_copy(),
                             suffix=self.suffix, side=self.side, remote=None)
        return view

    # -- refit data -------------------------------------------------------------------------------------
    def refit_data(self, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """(X [rows, K], teacher T [rows, out]) on the re-fit samples: the rows of real tokens, subsampled
        to REFIT_ROWS (convolutions, long token sequences)."""
        layer, x = self.layer, self.acts[self.layer.x]
        valid = self.ev.layer_rows(layer, x, self.ev.n_refit)
        rows = None if valid is None else np.flatnonzero(valid)
        total = layer.n_rows(x.shape) if rows is None else len(rows)
        if total > REFIT_ROWS:
            rows = np.sort(np.random.default_rng(seed).choice(total if rows is None else rows, REFIT_ROWS,
                                                              replace=False))
        t = layer.y_flat(self.ev.teacher_y[layer.weight])
        return layer.x_mat(x, rows).astype(np.float32), (t if rows is None else t[rows])

    # -- evaluation -------------------------------------------------------------------------------------
    def use_pool(self, pool: np.ndarray) -> None:
        """Candidates will be subsets of `pool` (flat indices, in the searcher's order): pre-gather its
        weighted input rows once, grouped by output neuron."""
        self.pool = np.asarray(pool)
        self.pool_order = np.argsort(self.pool, kind="stable")
        if not self.layer.fast:
            return
        if self.ev.workers is not None:
            self.remote = self.remote or self.ev.workers.share(self)
            self.remote.use_pool(self.pool)
            return
        sorted_pool = self.pool[self.pool_order]
        outs = sorted_pool // self.k
        self.pool_outputs = np.unique(outs)
        self.pool_bounds = np.searchsorted(outs, np.r_[self.pool_outputs, self.out])
        self.pool_cols, self.pool_w = sorted_pool % self.k, -self.w_mat.ravel()[sorted_pool]
        rows = self.x_t.shape[1]
        small = rows * len(sorted_pool) <= POOL_CACHE_ELEMENTS
        self.pool_g = self.x_t[self.pool_cols] * self.pool_w[:, None] if small else None

    def evaluate_members(self, members: np.ndarray) -> np.ndarray:
        """Fitness of candidates given as a bool matrix [candidates, pool] over the pool of use_pool."""
        if not self.layer.fast:
            return self.evaluate([np.sort(self.pool[row]) for row in members])
        if self.remote is not None:
            t0 = time.perf_counter()
            scores = self.remote.score(members)
            self._count(len(members), t0)
            return scores
        stack = self.stack  # builds the suffix session on first use: a cost of the visit, not of a candidate
        t0 = time.perf_counter()
        z = members[:, self.pool_order].astype(np.float32)
        scores = np.concatenate([self._fast_pool(z[i:i + stack]) for i in range(0, len(z), stack)])
        self._count(len(members), t0)
        return scores

    def apply(self, idx: np.ndarray) -> None:
        """Commit zeroing `idx` inside this view (weights and cached layer output), for a further search."""
        if self.remote is not None:
            self.remote.apply(idx)
        if self.layer.fast:
            flat_w = self.w_mat.ravel()
            delta = sparse_rows(self.x_t, idx // self.k, idx % self.k, -flat_w[idx], self.out)
            self.y_flat = self.y_flat + delta.T
        self.w_mat = self.w_mat.copy()
        self.w_mat.ravel()[idx] = 0

    def _count(self, n: int, t0: float) -> None:
        c = self.ev.counter
        c.evaluations += n
        c.seconds += time.perf_counter() - t0
        c.by_layer[self.layer.weight] = c.by_layer.get(self.layer.weight, 0) + n

    def evaluate(self, zero_sets: list[np.ndarray]) -> np.ndarray:
        """Fitness of zeroing each set of flat [out, K] indices on top of the current weights."""
        if not zero_sets:
            return np.zeros(0)
        stack = self.stack if self.layer.fast else 1  # (see evaluate_members)
        t0 = time.perf_counter()
        if self.layer.fast:
            scores = np.concatenate([self._fast(zero_sets[i:i + stack]) for i in range(0, len(zero_sets), stack)])
        else:
            scores = np.array([self._full(idx) for idx in zero_sets])
        self._count(len(zero_sets), t0)
        return scores

    def evaluate_dense(self, w_mat: np.ndarray, bias: np.ndarray | None) -> float:
        """Fitness with the layer's weight (and bias) replaced outright (after re-fitting)."""
        if not self.layer.fast:
            return self._run_weights({self.layer.weight: self.layer.from_mat(w_mat)})
        x = self.x_t.T
        old_b = self.weights[self.layer.bias] if self.layer.bias else None
        delta = x @ (w_mat - self.w_mat).T
        if bias is not None and old_b is not None:
            delta += (bias - old_b) * np.float32(self.layer.bias_scale)
        return float(self._suffix_fitness(self.y_flat[None] + delta[None])[0])

    def _fast_pool(self, z: np.ndarray) -> np.ndarray:
        """Delta of pool candidates z [kc, pool] (sorted pool order): per output neuron, [kc, L] @ [L, rows]."""
        kc = len(z)
        delta = np.zeros((kc, self.out, self.x_t.shape[1]), np.float32)
        b = self.pool_bounds
        for j, o in enumerate(self.pool_outputs):  # a loop over output neurons, each one BLAS product
            s, e = b[j], b[j + 1]
            g = self.pool_g[s:e] if self.pool_g is not None else self.x_t[self.pool_cols[s:e]] * self.pool_w[s:e, None]
            delta[:, o, :] = z[:, s:e] @ g
        return self._suffix_fitness(self.y_flat[None] + np.swapaxes(delta, 1, 2))

    def _fast(self, sets: list[np.ndarray]) -> np.ndarray:
        kc, out = len(sets), self.out
        sizes = np.array([len(s) for s in sets])
        allidx = np.concatenate(sets)
        owner = np.repeat(np.arange(kc), sizes)
        shared = np.zeros(0, np.int64)
        if kc > 1:
            uniq, counts = np.unique(allidx, return_counts=True)
            shared = uniq[counts == kc]
        own = ~np.isin(allidx, shared) if len(shared) else np.ones(len(allidx), bool)
        flat_w = self.w_mat.ravel()
        base = sparse_rows(self.x_t, shared // self.k, shared % self.k, -flat_w[shared], out)  # [out, rows]
        idx = allidx[own]
        delta = sparse_rows(self.x_t, owner[own] * out + idx // self.k, idx % self.k, -flat_w[idx], kc * out)
        delta = delta.reshape(kc, out, -1) + base[None]
        return self._suffix_fitness(self.y_flat[None] + np.swapaxes(delta, 1, 2))

    def _suffix_fitness(self, y_flat: np.ndarray) -> np.ndarray:
        """Fitness of stacked layer outputs [kc, rows, out]."""
        kc = y_flat.shape[0]
        y = self.layer.y_native(y_flat, self.y_shape).astype(np.float32)
        outs = {}
        if self.runner is not None:
            results = self._run_suffix(y)
            outs = {name: r for name, r in zip(self.runner.output_names, results)}
        if self.layer.y in self.ev.output_names:
            outs[self.layer.y] = y
        student = [outs[o] if o in outs else np.broadcast_to(self.const_out[o], (kc, *self.const_out[o].shape))
                   for o in self.ev.output_names]
        return fitness_batch(self.ev.teacher_out, student, self.ev.out_weights)

    def _run_suffix(self, y: np.ndarray) -> list[np.ndarray]:
        kc, n = y.shape[:2]
        if self.stack > 1 and kc > 1:
            feed = {self.suffix.inputs[0]: y.reshape(kc * n, *y.shape[2:])}
            feed.update({k: samples.join([v] * kc, self.ev.axes[k]) for k, v in self.side.items()})
            return [_unstack(r, kc, self.ev.axes.get(name, 0))
                    for name, r in zip(self.runner.output_names, self.runner.run(feed))]
        ev, y_name = self.ev, self.layer.y
        out_axes = [ev.axes.get(name, 0) for name in self.runner.output_names]
        n = ev.n_fit if ev.axes[y_name] is not None else ev.batch
        per = []
        for c in range(kc):
            feeds = [{self.suffix.inputs[0]: ev.slice(y[c], y_name, start, start + ev.batch),
                      **{k: ev.slice(v, k, start, start + ev.batch) for k, v in self.side.items()}}
                     for start in range(0, n, ev.batch)]
            per.append(run_batches(self.runner, feeds, out_axes))
        return [np.stack([p[i] for p in per]) for i in range(len(per[0]))]

    def _check_stacking(self) -> int:
        """How many candidates one suffix run may stack (1 when stacking changes the results)."""
        per_candidate = max(self.y_flat.nbytes + sum(v.nbytes for v in self.side.values()), 1)
        limit = int(max(1, STACK_BYTES // per_candidate))
        if self.runner is None:
            return max(limit, 1)
        if not self.ev.stackable_batch or limit < 2 or self.ev.axes[self.layer.y] != 0:
            return 1
        self.stack = 2
        y = self.layer.y_native(self.y_flat[None], self.y_shape)
        try:
            single = self._run_suffix_single(y[0])
            stacked = self._run_suffix(np.concatenate([y, y]))
        except Exception:  # noqa: BLE001 - a suffix with a fixed batch cannot stack
            return 1
        same = all(s.shape == st[1].shape and np.allclose(s, st[1], rtol=1e-4, atol=1e-5)
                   for s, st in zip(single, stacked))
        return limit if same else 1

    def _run_suffix_single(self, y: np.ndarray) -> list[np.ndarray]:
        feed = {self.suffix.inputs[0]: y}
        feed.update(self.side)
        return self.runner.run(feed)

    def _full(self, idx: np.ndarray) -> float:
        w = self.w_mat.copy().ravel()
        w[idx] = 0
        return self._run_weights({self.layer.weight: self.layer.from_mat(w.reshape(self.out, self.k))})

    def _run_weights(self, change: dict[str, np.ndarray]) -> float:
        acts = self.ev.run_probe({**self.weights, **change}, self.ev.n_fit, self.ev.output_names)
        return float(fitness_batch(self.ev.teacher_out, [acts[o][None] for o in self.ev.output_names],
                                   self.ev.out_weights)[0])

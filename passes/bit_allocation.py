"""bit-allocation: the fewest coded bytes per layer whose joint loss stays within a budget.

Sensitivity: every target layer is quantized alone under every scheme x bit width (plus exact; a layer
holding a tenth of the targets' entries also at the half rates of its entropy-sized grids) and
measured with the fitness engine against the incoming (e.g. sparsified) model's outputs, on all calibration
samples or, to fit a time limit, on an even spread of a share of them (`sensitivity_share`); with the
context's Ray workers, a layer's quantizations are measured across them (passes/engine/distributed.py). When
even that is too slow, `scale_from` measures each layer alone at one spec only and takes every other spec's
damage as that measurement times the ratio of their error power (KL and 1 - cosine grow with the power of
small output noise: the layer output error's on calibration activations when known, else the weight
error's), and `max_joint` caps the joint measurements. Search
(passes/quant/allocate.py): a knapsack on the additive damage estimate (`Measure.damage`: a cosine task's
mean drop, read where its user reads it, as pooled outputs under `cosine:mean`; else KL), its budget bisected against
joint measurements, then single-layer refinements; or a greedy descent from all-exact. Where a scheme fits
calibration data (GPTQ, the codebook re-fit), the joint measurements are out of fold (passes/quant/crossfit.py):
each fold of the samples under the weights fitted on the others, since in-sample they flatter. The objective
is the estimated *coded* size (entropy of codes and mask plus side information,
passes/quant/sizing.py), not the nominal bit count. The budget is `max_drop`
accuracy points (labels) or top-1 agreement points (no labels), `max_kl`, or a `target_bytes` size.
With labels the drop is taken at its upper bound, measured + z standard errors: the search picks among
many allocations on the same calibration set, and the raw drop lets it pick noise.
"""
from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, replace
from typing import Literal

import numpy as np

from evonnx.errors import EvonnxError
from evonnx.passes.base import Pass, PassContext, param, register
from evonnx.passes.engine.calib import fixed_batch
from evonnx.passes.quant.allocate import SIZE_TRIES, Option, Searcher, frontier
from evonnx.passes.quant.apply import Fidelity, Measure, Nontarget, Quantizer, nontargets, rounded_nontargets
from evonnx.passes.quant.crossfit import CrossFit, select
from evonnx.passes.quant.layer import QuantSpec
from evonnx.passes.quant.sizing import HEADER_BYTES, coded_bytes
from evonnx.passes.quantize import quantize_plan
from evonnx.passes.state import ModelState

log = logging.getLogger(__name__)

MIN_SENSITIVITY_SAMPLES = 8
DENSE_BYTES = 64 << 20  # most bytes of dequantized weights a layer's sensitivity measurements hold at a time
BudgetMetric = Literal["auto", "task", "accuracy", "agreement", "cosine", "kl"]


@register
class BitAllocation(Pass):
    """Choose a scheme and bit width per layer: least estimated coded bytes within a loss budget."""

    name = "bit-allocation"

    @dataclass
    class Config:
        schemes: list = param(["uniform/channel/sym", "uniform/channel/asym", "uniform/channel/rate",
                               "uniform/channel/rate+gptq", "uniform/tensor/sym", "codebook", "codebook+refit"], "scheme families tried per layer (see the quantize pass)")
        bits: list = param([1, 2, 3, 4, 5, 6, 7, 8], "bit widths tried per scheme")
        metric: BudgetMetric = param("auto", "budget metric: task (the run's task metric, passes/engine/tasks.py, at its "
                            "upper bound: measured + z standard errors), accuracy (labels), agreement (top-1 with "
                            "the incoming model), cosine (100 x (1 - the lowest output's mean cosine): cosine "
                            "points), kl (mean KL, or rel. MSE for non-classifiers); auto = task when the run has "
                            "one, else accuracy, else agreement, else cosine")
        max_drop: float = param(0.5, "accuracy points lost, top-1 points changed, or cosine points lost, "
                                "vs the incoming model")
        z: float = param(2.0, "accuracy budget on the drop's upper bound: measured + z standard errors (McNemar, "
                         "from the calibration samples that change); 0 = the raw drop, which overfits the search")
        max_kl: float = param(0.01, "mean KL (rel. MSE for non-classifiers) from the incoming model, metric = kl")
        target_bytes: int = param(0, "> 0: best fidelity within this estimated size of all weights (bytes), "
                                  "instead of a loss budget")
        search: Literal["knapsack", "greedy"] = param("knapsack", "knapsack (bisected on joint measurements, then refined) or greedy")
        min_size: int = param(32, "target weights with fewer entries are kept exact")
        nontarget: Literal["auto", Nontarget] = param("auto", "biases, norms and small tensors: exact, fp16 or bf16 (rounded), int8 "
                                           "(uniform per tensor), or auto: the smallest of int8, fp16, exact "
                                           "whose joint loss stays within the budget (with target_bytes: chosen "
                                           "with the allocation, by the least measured damage within the size)")
        refit_rows: int = param(4096, "calibration rows per layer for the codebook re-fit")
        keep: list = param([], "target weights kept exact (e.g. ones the calibration data never exercises)")
        sensitivity_share: float = param(1.0, "share of the calibration samples each layer alone is measured on "
                                         f"(evenly spread, at least {MIN_SENSITIVITY_SAMPLES}); the joint search "
                                         "measures all")
        scale_from: str = param("", "a spec (e.g. uniform/channel/rate@3): each layer alone is measured at it only, "
                                "every other spec's damage scaled from it by their error power; empty: "
                                "every spec measured")
        max_joint: int = param(0, "most joint measurements the search makes (0: as many as it needs)")
        tighter: list = param([0.8, 0.64, 0.5], "shares of a loss budget searched again after it, each allocation kept "
                              "in the record for the budget guard to try among its fallbacks, smallest first (a "
                              "search fitted to the calibration samples often lands a little beyond the budget on "
                              "held-out ones)")
        cross_fit: int = param(4, "folds of the calibration samples for joint measurements out of fold where a "
                               "scheme fits calibration data (GPTQ, re-fit): each fold measured with the weights "
                               "fitted on the others (passes/quant/crossfit.py); 0: in-sample, which flatters")
        half_share: float = param(0.1, "a weight holding at least this share of the targets' entries also tries its "
                                  "entropy-sized grids at the half rates between listed widths (3.5 between 3 "
                                  "and 4): a bit of such a weight is too coarse a step of the whole size; above 1: "
                                  "none")

    def run(self, state: ModelState, ctx: PassContext) -> ModelState:
        cfg = self.config
        plan, nontarget, extra, quantizer, quantized, alone = self._allocate(state, ctx)  # its table, folds freed
        return quantize_plan(state, ctx, plan, nontarget, cfg.refit_rows, self.name, asdict(cfg), extra, quantizer,
                             exact=set(cfg.keep), alone=alone, quantized=quantized)

    def _allocate(self, state: ModelState, ctx: PassContext) -> tuple[dict, str, dict, Quantizer, dict, dict]:
        """The searched plan {weight: spec}, the other tensors' rounding, the record's extras, the quantizer (its
        Grams and factors), and each planned weight's quantization (codes only) and damage alone."""
        cfg = self.config
        engine = ctx.engine(state)
        fidelity = Fidelity(engine, {n: state.current(n) for n in engine.weight_names}, ctx.metric)  # biases too
        alone = _sensitivity_fidelity(state, ctx, fidelity, cfg.sensitivity_share)
        measure = alone if ctx.workers is None else ctx.workers.fidelity(alone, state.model)
        metric, limit = _budget(cfg, fidelity)
        loss = budget_loss(metric, cfg.z)
        specs = list(dict.fromkeys([QuantSpec.parse(f, b) for f in cfg.schemes for b in cfg.bits]
                                   + [QuantSpec("raw", 32)]))
        cross = (CrossFit.build(state, ctx, fidelity, cfg.cross_fit, cfg.refit_rows, ctx.seed)
                 if cfg.cross_fit > 1 and any(s.refit for s in specs) else None)
        quantizer = cross.whole() if cross else Quantizer(state, engine, cfg.refit_rows, ctx.seed, ctx.metric)
        reference = QuantSpec.parse(cfg.scale_from) if cfg.scale_from else None
        names = [n for n in state.targets if state.table[n].size >= cfg.min_size and n not in cfg.keep]
        entries = sum(state.table[n].size for n in names)
        table, measured, evaluations = {}, {}, 0
        for name in names:
            tried = [s for s in specs if not s.refit or s.scheme == "uniform" or quantizer.can_refit(name)]
            if state.table[name].size >= cfg.half_share * entries:
                tried = half_rates(tried)
            done = [quantizer.quantize(name, s).compact() for s in tried]  # codes: 1 byte an entry, not 5
            scores, n = _alone(name, tried, done, quantizer, measure, loss, reference)
            evaluations += n
            options = [Option(s, q, coded_bytes(q.tensor)["total"], damage, drop)
                       for s, q, (damage, drop) in zip(tried, done, scores)]
            measured[name] = [(o.spec.label, round(o.bytes, 1), o.damage, o.drop) for o in options]
            table[name] = frontier(options, None if cfg.target_bytes else limit)
        joint = Joint(fidelity, cross)
        searcher = Searcher(table, lambda opts: loss(joint(opts)), limit, cfg.max_joint or None)
        nontarget, tried_modes = cfg.nontarget, {}
        if cfg.target_bytes > 0:
            nontarget, choice, size_scores, tried_modes = _fit_size(state, joint, searcher, set(names),
                                                                    set(cfg.keep), cfg.target_bytes, nontarget)
            if choice is None:
                least = _fixed_bytes(state, set(names), "int8", set(cfg.keep)) + sum(o[0].bytes for o in table.values())
                raise EvonnxError(f"bit-allocation: target_bytes={cfg.target_bytes} is below the smallest "
                                  f"allocation found ({least:.0f} estimated bytes)")
        else:
            size_scores = {}
            choice = searcher.knapsack() if cfg.search == "knapsack" else searcher.greedy()
        tighter = [] if cfg.target_bytes > 0 else _tighter(searcher, choice, cfg.tighter, cfg.search)
        chosen = searcher.options(choice)
        plan = {n: o.spec for n, o in chosen.items()}
        if nontarget == "auto":
            nontarget, tried_modes = _nontarget_mode(state, joint, loss, chosen, set(plan) | set(cfg.keep),
                                                     max(limit, searcher.loss(choice)))
        extra = {"metric": metric, "limit": limit, "joint_loss": searcher.loss(choice),
                 "joint_evaluations": len(searcher.cache), "sensitivity_evaluations": evaluations,
                 "sensitivity_samples": alone.engine.calib.num_samples,
                 "cross_folds": len(cross.folds) if cross else 0, "cross_fitted_options": joint.refitted,
                 "allocation": {n: s.label for n, s in plan.items()}, "sensitivity": measured,
                 "tried": [(round(searcher.bytes(c), 1), loss) for c, loss in searcher.cache.items()],
                 "chosen_bytes": round(searcher.bytes(choice), 1), "nontarget_mode": nontarget, "tighter": tighter,
                 "nontarget_losses": tried_modes, "spilled_bytes": quantizer.store.written,
                 "size_candidates": [(round(searcher.bytes(c), 1), d) for c, d in size_scores.items()]}
        goal = (f"size target {cfg.target_bytes} bytes (least damage of {len(size_scores)} allocations, other tensors "
                f"{nontarget})" if cfg.target_bytes > 0 else f"{metric} budget {limit:g}")
        log.info(f"bit-allocation: {goal}, {extra['sensitivity_evaluations']} sensitivity and "
                 f"{extra['joint_evaluations']} joint evaluations"
                 f"{' (out of fold)' if cross else ''}; " + ", ".join(f"{n}: {s}" for n, s in
                                                                      extra["allocation"].items()))
        if quantizer.store.written:
            log.info(f"bit-allocation: Grams and GPTQ factors beyond {quantizer.store.budget / 2**20:.0f} MiB "
                     f"waited in files: {quantizer.store.written / 2**20:.0f} MiB written")
        return (plan, nontarget, extra, quantizer, {n: o.quantized for n, o in chosen.items()},
                {n: o.damage for n, o in chosen.items()})


class Dense:
    """Each layer's dequantized weight for the option last asked for (fitted without fold `fold` where the option
    has such fits): the table holds codes only, and a joint search, moving one layer at a time, dequantizes
    only what changed (one dense copy a layer, not one an option)."""

    def __init__(self, fold: int | None = None):
        self.fold = fold
        self.last: dict[str, tuple[Option, np.ndarray]] = {}

    def __call__(self, options: dict[str, Option]) -> dict[str, np.ndarray]:
        for name, option in options.items():
            if name not in self.last or self.last[name][0] is not option:
                fits = option.quantized if self.fold is None or option.folds is None else option.folds[self.fold]
                self.last[name] = (option, fits.weight)
        return {name: self.last[name][1] for name in options}


class Joint:
    """The measurement of a joint allocation (with `others`: more tensors' values) against the incoming model:
    on the calibration samples, or out of fold with `cross` (passes/quant/crossfit.py). An option's fits
    without each fold are made the first time a measurement takes it: the search visits a few options a layer."""

    def __init__(self, fidelity: Fidelity, cross: CrossFit | None):
        self.fidelity, self.cross = fidelity, cross
        self.dense = [Dense()] if cross is None else [Dense(k) for k in range(len(cross.folds))]
        self.refitted = 0  # options fitted without each fold

    def __call__(self, options: dict[str, Option], others: dict[str, np.ndarray] | None = None) -> Measure:
        if self.cross is None:
            return self.fidelity.evaluate([{**(others or {}), **self.dense[0](options)}])[0]
        for name, option in options.items():
            if option.folds is None and option.spec.refit:
                fits = self.cross.fit(name, option.spec)
                option.folds = None if fits is None else tuple(q.compact() for q in fits)
                self.refitted += fits is not None
        return self.cross.measure([{**(others or {}), **dense(options)} for dense in self.dense])


def half_rates(specs: list[QuantSpec]) -> list[QuantSpec]:
    """`specs` with every entropy-sized grid also at the half rate above it where the next whole rate is listed."""
    listed = set(specs)
    halves = [replace(s, bits=s.bits + 0.5) for s in specs
              if s.rate and replace(s, bits=s.bits + 1) in listed and replace(s, bits=s.bits + 0.5) not in listed]
    return specs + halves


def _alone(name: str, tried: list[QuantSpec], done: list, quantizer: Quantizer, measure, loss,
           reference: QuantSpec | None) -> tuple[list[tuple[float, float]], int]:
    """(damage, drop) of each quantization in `done` (under `tried`) of weight `name` alone, and how many were
    measured: each measured, or with `reference` only that one, the others scaled by their error power
    (Quantizer.error_power; each measured when the reference is exact)."""
    if reference is not None:
        same = [q.weight for s, q in zip(tried, done) if s == reference]
        base = same[0] if same else quantizer.quantize(name, reference).weight
        power = np.array([quantizer.error_power(name, w) for w in [*(q.weight for q in done), base]])
        if power[-1] > 0:
            m = measure.evaluate([{name: base}])[0]
            ratio = power[:-1] / power[-1]
            return [(m.damage * r, loss(m) * r) for r in ratio], 1
    per = max(1, DENSE_BYTES // max(done[0].tensor.nbytes, 1))  # dequantized copies a batch of measurements holds
    metrics = [m for i in range(0, len(done), per)
               for m in measure.evaluate([{name: q.weight} for q in done[i:i + per]])]
    return [(m.damage, loss(m)) for m in metrics], len(done)


def _tighter(searcher: Searcher, choice: tuple, shares: list[float], search: str) -> list[dict]:
    """The allocations the same search finds within each share of its budget (each smaller share's only where it
    differs from the last and the joint measurements are not spent): {share, allocation, joint_loss, bytes}."""
    out, limit, last = [], searcher.limit, choice
    try:
        for share in sorted(shares, reverse=True):
            if searcher.spent():
                break
            searcher.limit = limit * share
            alt = searcher.knapsack() if search == "knapsack" else searcher.greedy()
            if alt != last and searcher.ok(alt):
                out.append({"share": share, "allocation": {n: o.spec.label for n, o in searcher.options(alt).items()},
                            "joint_loss": searcher.loss(alt), "bytes": round(searcher.bytes(alt), 1)})
                last = alt
    finally:
        searcher.limit = limit
    return out


def _sensitivity_fidelity(state: ModelState, ctx: PassContext, fidelity: Fidelity, share: float) -> Fidelity:
    """`fidelity` on an even spread of `share` of its calibration samples (at least MIN_SENSITIVITY_SAMPLES, a
    multiple of the model's fixed batch), or `fidelity` itself when that is all of them."""
    calib = fidelity.engine.calib
    total, multiple = calib.num_samples, fixed_batch(state.model, calib.axes) or 1
    n = -(-max(math.ceil(share * total), MIN_SENSITIVITY_SAMPLES) // multiple) * multiple
    if n >= total:
        return fidelity
    return select(state, ctx, fidelity, np.round(np.linspace(0, total - 1, n)).astype(np.int64), "for the sensitivity")


def _fit_size(state: ModelState, joint: Joint, searcher: Searcher, names: set[str], keep: set[str], target: int,
              nontarget: str) -> tuple[str, tuple | None, dict, dict[str, float]]:
    """The allocation within `target` bytes with the least measured damage (`Measure.damage`), the other tensors'
    rounding (`nontarget` auto: int8, fp16 or exact) chosen with it: rounding them frees bytes for the weights.
    The candidates measured, over all modes, are at most the searcher's `max_joint` (the time plan's joint
    measurements), one a mode at least.
    Returns (mode, choice or None, the chosen mode's candidates and damages, the least damage of each mode tried)."""
    best, tried = (nontarget, None, {}), {}
    modes = ("int8", "fp16", "exact") if nontarget == "auto" else (nontarget,)
    tries = SIZE_TRIES if searcher.max_joint is None else max(1, min(SIZE_TRIES, searcher.max_joint // len(modes)))
    for mode in modes:
        others = rounded_nontargets(state, names | keep, mode)

        def measure(opts: dict, others: dict = others) -> float:
            return joint(opts, others).damage

        choice, scores = searcher.by_size(target - _fixed_bytes(state, names, mode, keep), measure, tries)
        if choice is not None:
            tried[mode] = scores[choice]
            if best[1] is None or scores[choice] < tried[best[0]]:
                best = (mode, choice, scores)
    return (*best, tried)


def _nontarget_mode(state: ModelState, joint: Joint, loss, chosen: dict[str, Option], exclude: set[str],
                    limit: float) -> tuple[str, dict[str, float]]:
    """The first of int8, fp16 whose rounding of the other float tensors, on top of the chosen
    allocation, keeps the joint loss within `limit`; else exact. Returns (mode, loss of each mode tried)."""
    tried = {}
    for mode in ("int8", "fp16") if nontargets(state, exclude) else ():
        tried[mode] = loss(joint(chosen, rounded_nontargets(state, exclude, mode)))
        if tried[mode] <= limit:
            return mode, tried
    return "exact", tried


def _budget(cfg, fidelity: Fidelity) -> tuple[str, float]:
    metric, start = cfg.metric, fidelity.start
    if metric == "task" and fidelity.task is None:
        raise EvonnxError("bit-allocation: metric=task needs a task metric in the pass context")
    if metric == "auto":
        metric = ("task" if fidelity.task is not None else "accuracy" if start.accuracy is not None
                  else "agreement" if start.top1 is not None else "cosine")
    if metric == "accuracy" and start.accuracy is None:
        raise EvonnxError("bit-allocation: metric=accuracy needs calibration labels")
    if metric == "agreement" and start.top1 is None:
        raise EvonnxError("bit-allocation: metric=agreement needs a classifier output")
    return metric, (cfg.max_kl if metric == "kl" else cfg.max_drop)


def budget_loss(metric: str, z: float):
    """Measure against the incoming model -> loss: accuracy points lost (upper bound), top-1 points
    changed, cosine points lost (the lowest output), or KL (rel. MSE) from the incoming model."""
    if metric == "task":
        return lambda m: m.task.upper(z)
    if metric == "accuracy":
        return lambda m: m.accuracy_drop(z)
    if metric == "agreement":
        return lambda m: 100.0 * (1.0 - m.metrics.top1)
    if metric == "cosine":
        return lambda m: 100.0 * (1.0 - m.metrics.min_cosine)
    return lambda m: m.metrics.fitness


def _fixed_bytes(state: ModelState, planned: set[str], nontarget: str, keep: set[str] = frozenset()) -> float:
    """Estimated bytes of the weights the plan does not code: raw (and `keep` always), 2 bytes an entry when
    rounded, 1 in int8."""
    total = 0.0
    for w in state.table:
        if w.name not in planned:
            mode = "exact" if w.name in keep else nontarget
            item = {"exact": state.current(w.name).dtype.itemsize, "int8": 1}.get(mode, 2)
            total += w.size * item + HEADER_BYTES + len(w.name)
    return total

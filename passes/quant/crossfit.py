"""Out-of-fold joint measurements for the bit allocation.

GPTQ's rounding and the codebook re-fit fit a weight to the calibration samples' activations (the layers'
Grams), so an allocation's joint loss measured on those same samples is optimistic: minilm-l3 with every weight
at rate 3 loses 1.33 pooled cosine points on the sentences its Grams came from and 2.10 on the others
(tools/bench/RESULTS.md). A search on such measurements picks the cheapest allocation that looks within budget
and lands beyond it on held-out samples. Cross-fitting: the samples are split in k folds, every Gram-fitted
quantization is fitted again on the Grams of all folds but one, and a joint candidate is measured on each fold
with the fits that left it out, so every sample's outputs come from weights that never saw it. The Grams are
summed fold by fold (one activation pass in all), and the shipped weights are fitted on all folds together: with
k = 4 a fit sees 3/4 of the rows the shipped one does (at rate 3 on minilm-l3 that costs 3 % more loss on
held-out sentences, and a half 23 %: two folds would aim too low). Quantizations that use no calibration data
are the same in every fold.
"""
from __future__ import annotations

import logging

import numpy as np

from evonnx.passes.base import PassContext
from evonnx.passes.engine.calib import fixed_batch
from evonnx.passes.engine.samples import join
from evonnx.passes.quant.apply import Fidelity, Measure, Quantizer, spill_for
from evonnx.passes.quant.layer import Quantized, QuantSpec
from evonnx.passes.state import ModelState

log = logging.getLogger(__name__)

MIN_SAMPLES = 16  # fewer calibration samples are measured in-sample: a fold's fits would see too few rows


def select(state: ModelState, ctx: PassContext, fidelity: Fidelity, index: np.ndarray, why: str) -> Fidelity:
    """`fidelity` on the calibration samples at `index` (a new engine over them; the same weights exposed)."""
    calib = fidelity.engine.calib
    sub = calib.select(index, f"{calib.source} ({len(index)} samples {why})")
    context = PassContext(sub, device=ctx.device, batch_size=ctx.batch_size, metric=ctx.metric)
    return Fidelity(context.engine(state, fidelity.engine.weight_names), fidelity.base, fidelity.task)


class CrossFit:
    """The calibration samples in folds, the Grams of each (a Quantizer a fold), and the out-of-fold measurement."""

    def __init__(self, fidelity: Fidelity, folds: list[Fidelity], index: list[np.ndarray], parts: list[Quantizer]):
        self.fidelity, self.folds, self.index, self.parts = fidelity, folds, index, parts
        self.order = np.argsort(np.concatenate(index), kind="stable")  # joined samples -> calibration order
        # the quantizers of all folds but one each: their Grams summed at need and not kept (the parts' are), GPTQ's
        # factors kept (inverting a K x K Gram costs more than the rounding it serves: 0.47 s against 0.15 s for
        # minilm-l3's 1536-wide layers), made once per fold, not per option
        self.without = [Quantizer.pooled(parts[:k] + parts[k + 1:], hold=False) for k in range(len(parts))]

    @classmethod
    def build(cls, state: ModelState, ctx: PassContext, fidelity: Fidelity, folds: int, max_rows: int,
              seed: int) -> "CrossFit | None":
        """`folds` seeded random folds (fewer where the model's fixed batch leaves fewer batches), each a whole
        number of batches; None under MIN_SAMPLES samples, fewer than 2 folds, or where an output carries no
        sample axis or several entries a sample (its samples cannot be joined)."""
        engine = fidelity.engine
        total, multiple = engine.calib.num_samples, fixed_batch(state.model, engine.calib.axes) or 1
        k = min(folds, total // multiple)
        if total < MIN_SAMPLES or k < 2 or any(a is None for a in engine.axes):
            return None
        cuts = [round(i * (total // multiple) / k) * multiple for i in range(1, k)]
        index = [np.sort(part) for part in np.split(np.random.default_rng(seed).permutation(total), cuts)]
        subsets = [select(state, ctx, fidelity, i, f"of fold {j + 1} of {k}") for j, i in enumerate(index)]
        for i, sub in zip(index, subsets):
            if sub.engine.axes != engine.axes or any(np.shape(o)[a] != len(i) for o, a in
                                                     zip(sub.reference, sub.engine.axes)):
                log.info("bit-allocation: joint losses measured in-sample (outputs hold several entries a sample)")
                return None
        store = spill_for(state)  # all folds' Grams and factors within one budget
        parts = [Quantizer(state, sub.engine, max_rows, seed, ctx.metric, store=store) for sub in subsets]
        return cls(fidelity, subsets, index, parts)

    def whole(self) -> Quantizer:
        """The quantizer of all samples: every fold's Grams summed."""
        return Quantizer.pooled(self.parts)

    def fit(self, name: str, spec: QuantSpec) -> tuple[Quantized, ...] | None:
        """`name` under `spec` fitted on the Grams of all folds but each one in turn, or None where the spec fits
        no calibration data to it."""
        if not spec.refit or not all(p.can_refit(name) for p in self.parts):
            return None
        return tuple(q.quantize(name, spec) for q in self.without)

    def measure(self, weights: list[dict[str, np.ndarray]]) -> Measure:
        """The incoming model with `weights[k]` (fitted without fold k) measured on fold k's samples, the folds
        joined in calibration order and measured against the incoming model as one."""
        return self.fidelity.measure(self.outputs(weights))

    def outputs(self, weights: list[dict[str, np.ndarray]]) -> list[np.ndarray]:
        """The outputs `measure` measures, in calibration order."""
        outputs = [fold.engine.outputs({**self.fidelity.base, **w}) for fold, w in zip(self.folds, weights)]
        return [np.take(join(list(parts), axis), self.order, axis=axis)
                for axis, parts in zip(self.fidelity.engine.axes, zip(*outputs))]

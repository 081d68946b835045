"""One-shot magnitude pruning: zero the smallest |w|, globally (one threshold) or per layer; optional re-fit."""
from __future__ import annotations

import logging
import time

import numpy as np

from evonnx.passes.base import Pass, PassContext, register
from evonnx.passes.sparsity import common
from evonnx.passes.state import ModelState

log = logging.getLogger(__name__)


@register
class MagnitudePrune(Pass):
    """Zero the entries of smallest magnitude in one shot (the baseline DE must beat)."""

    name = "magnitude"

    Config = common.ScopedTargetConfig

    def run(self, state: ModelState, ctx: PassContext) -> ModelState:
        cfg, t0 = self.config, time.perf_counter()
        layers, ev = common.setup(state, ctx, cfg)
        mags = {l.weight: np.abs(l.to_mat(state.current(l.weight))).ravel() for l in layers}
        masks = common.masks_by_score(self.name, state, ev, layers, cfg, mags)
        state = common.one_shot(state, ev, layers, masks, cfg)
        rec = common.record(self.name, cfg, state, layers, ev, t0, stop_reason="done")
        log.info(f"magnitude: sparsity {rec['sparsity']:.3f}, fitness {rec['fitness']:.4g}")
        return state.replace(record=rec)

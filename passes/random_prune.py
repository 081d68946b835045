"""Random pruning: zero uniformly chosen entries to the same per-layer targets; optional re-fit (a floor)."""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Literal

import numpy as np

from evonnx.passes.base import Pass, PassContext, param, register
from evonnx.passes.sparsity import common
from evonnx.passes.sparsity import targets as tg
from evonnx.passes.state import ModelState

log = logging.getLogger(__name__)


@register
class RandomPrune(Pass):
    """Zero random entries, exactly to each layer's target; seeded by the context."""

    name = "random"

    @dataclass
    class Config(common.TargetConfig):
        allocation: Literal["uniform", "sensitivity"] = param("uniform", "how a global target is split (uniform | sensitivity)")

    def run(self, state: ModelState, ctx: PassContext) -> ModelState:
        cfg, t0 = self.config, time.perf_counter()
        layers, ev = common.setup(state, ctx, cfg)
        targets, _ = common.layer_targets(state, ev, layers, cfg, "wanda")
        rng = np.random.default_rng([ctx.seed, 0x5EED])
        masks = {l.weight: tg.keep_mask(rng.random(l.size), tg.zero_count(l.size, targets[l.weight])).reshape(l.mat_shape)
                 for l in layers}
        state = common.one_shot(state, ev, layers, masks, cfg)
        rec = common.record(self.name, cfg, state, layers, ev, t0, stop_reason="done")
        log.info(f"random: sparsity {rec['sparsity']:.3f}, fitness {rec['fitness']:.4g}")
        return state.replace(record=rec)

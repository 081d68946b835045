"""One-shot magnitude pruning: zero the smallest |w|, globally (one threshold) or per layer; optional re-fit."""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from evonnx.passes.base import Pass, PassContext, param, register
from evonnx.passes.sparsity import common
from evonnx.passes.sparsity import targets as tg
from evonnx.passes.state import ModelState


@register
class MagnitudePrune(Pass):
    """Zero the entries of smallest magnitude in one shot (the baseline DE must beat)."""

    name = "magnitude"

    @dataclass
    class Config(common.TargetConfig):
        scope: str = param("global", "global: one threshold over all layers | layer: per-layer targets")
        allocation: str = param("uniform", "with scope=layer: how a global target is split (uniform | sensitivity)")

    def run(self, state: ModelState, ctx: PassContext) -> ModelState:
        cfg, t0 = self.config, time.perf_counter()
        layers, ev = common.setup(state, ctx, cfg)
        mags = {l.weight: np.abs(l.to_mat(state.current(l.weight))).ravel() for l in layers}
        if cfg.scope == "global" and not cfg.layer_sparsity:
            tg.resolve([l.weight for l in layers], {}, cfg.sparsity, None)  # validates the target
            flat = np.concatenate([mags[l.weight] for l in layers])
            keep = tg.keep_mask(flat, tg.zero_count(flat.size, cfg.sparsity))
            parts = np.split(keep, np.cumsum([l.size for l in layers])[:-1])
            masks = {l.weight: p.reshape(l.mat_shape) for l, p in zip(layers, parts)}
        else:
            targets, _ = common.layer_targets(state, ev, layers, cfg, "magnitude")
            masks = {l.weight: tg.keep_mask(mags[l.weight], tg.zero_count(l.size, targets[l.weight])).reshape(l.mat_shape)
                     for l in layers}
        state = common.one_shot(state, ev, layers, masks, cfg)
        rec = common.record(self.name, cfg, state, layers, ev, t0, stop_reason="done")
        ctx.log(f"magnitude: sparsity {rec['sparsity']:.3f}, fitness {rec['fitness']:.4g}")
        return state.replace(record=rec)

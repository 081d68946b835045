"""gradient-prune: one-shot pruning by gradient saliency (first/second-order Taylor, SNIP); a baseline for DE.

Saliencies come from the graph run in torch (passes/torchnet/saliency.py). They estimate the loss change of
zeroing an entry, so one global threshold compares layers (scope=global); scope=layer splits the target
like the magnitude pass. Optional survivor re-fit as in the other sparsification passes.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Literal

import numpy as np

from evonnx.passes.base import Pass, PassContext, param, register
from evonnx.passes.sparsity import common
from evonnx.passes.state import ModelState

log = logging.getLogger(__name__)


@register
class GradientPrune(Pass):
    """Zero the entries of least gradient saliency in one shot."""

    name = "gradient-prune"

    @dataclass
    class Config(common.ScopedTargetConfig):
        method: Literal["taylor1", "snip", "taylor2"] = param("taylor2", "taylor1 |w dL/dw| | snip |w sum dL/dw| | taylor2 w^2 diag(Fisher) / 2")
        samples: int = param(256, "calibration samples the gradients are taken on")
        refit: bool = param(False, "re-fit surviving weights (and biases) to the teacher's layer outputs")

    def run(self, state: ModelState, ctx: PassContext) -> ModelState:
        from evonnx.passes.torchnet import require_torch, torch_device
        torch = require_torch(self.name)
        from evonnx.passes.torchnet.convert import OnnxModule
        from evonnx.passes.torchnet.saliency import saliency

        cfg, t0 = self.config, time.perf_counter()
        layers, ev = common.setup(state, ctx, cfg)
        names = [l.weight for l in layers]
        module = OnnxModule(state.model, names, {**state.held, **state.weights}, label=state.label)  # all at their current values
        module.to(torch_device(torch, ctx.device))
        raw = saliency(module, ctx.calib, cfg.method, cfg.samples, ctx.batch_size or 64, ctx.seed)
        scores = {}
        for l in layers:
            alive = common.mask_of(state, l).ravel()
            scores[l.weight] = np.where(alive, l.to_mat(raw[l.weight]).ravel(), -np.inf)  # pruned stay pruned
        masks = common.masks_by_score(self.name, state, ev, layers, cfg, scores)
        state = common.one_shot(state, ev, layers, masks, cfg)
        rec = common.record(self.name, cfg, state, layers, ev, t0, stop_reason="done")
        log.info(f"{self.name} ({cfg.method}): sparsity {rec['sparsity']:.3f}, fitness {rec['fitness']:.4g}")
        return state.replace(record=rec)

"""iterative-magnitude: iterative magnitude pruning with retraining (IMP with learning-rate rewinding).

The baseline the pruning literature uses (Han et al. 2015; Frankle & Carbin 2019; Renda et al. 2020):
round r of R prunes by magnitude to 1 - (1 - s)^(r/R) — the same fraction of the survivors each round —
then retrains the survivors with the mask fixed, its learning-rate schedule restarted from the top
("rewinding"). Pruning is the `magnitude` pass, retraining the `distill-finetune` pass (teacher KL plus
optional labels), so both keep their options, checkpoints and exactness guarantees; each round works in its
own folder of the work dir, so a killed run resumes at the round and step it reached.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from evonnx.errors import EvonnxError
from evonnx.passes.base import Pass, PassContext, get_pass, param, register
from evonnx.passes.sparsity import common
from evonnx.passes.state import ModelState

log = logging.getLogger(__name__)


@register
class IterativeMagnitude(Pass):
    """Prune by magnitude and retrain, `rounds` times, up to the sparsity target."""

    name = "iterative-magnitude"

    @dataclass
    class Config(common.ScopedTargetConfig):
        rounds: int = param(5, "prune-retrain rounds; each prunes the same fraction of the survivors")
        finetune: dict = param({"steps": 1000, "lr": 1e-3},
                               "distill-finetune settings of each round's retraining (steps, lr, data, ...)")

    def run(self, state: ModelState, ctx: PassContext) -> ModelState:
        cfg, t0 = self.config, time.perf_counter()
        if cfg.rounds < 1:
            raise EvonnxError(f"{self.name}: rounds must be >= 1, got {cfg.rounds}")
        common.check_scope(self.name, cfg)
        final = self._final_targets(state, ctx)
        prune = {k: getattr(cfg, k) for k in ("weights", "refit", "ridge", "fitness_samples", "refit_samples")}
        folder = ctx.pass_dir(self.name)
        rounds = []
        for r in range(1, cfg.rounds + 1):
            def at(s: float) -> float:
                return 1.0 - (1.0 - s) ** (r / cfg.rounds)
            targets = ({"sparsity": at(final), "scope": "global"} if isinstance(final, float) else
                       {"layer_sparsity": {n: at(s) for n, s in final.items()}, "scope": "layer"})
            sub = PassContext(ctx.calib, ctx.device, ctx.seed, None if folder is None else folder / f"round{r}",
                              ctx.progress, ctx.batch_size)
            state = get_pass("magnitude")(**targets, **prune).run(state, sub)
            pruned = state.history[-1]
            state = get_pass("distill-finetune")(**cfg.finetune).run(state, sub)
            tuned = state.history[-1]
            rounds.append({"round": r, "sparsity": pruned["sparsity"], "fitness_pruned": pruned["fitness"],
                           "fitness_retrained": tuned["fitness"], "steps": tuned["steps"]})
            log.info(f"{self.name}: round {r}/{cfg.rounds} sparsity {pruned['sparsity']:.4f}, fitness "
                         f"{pruned['fitness']:.4g} pruned -> {tuned['fitness']:.4g} retrained")
        targets = state.targets if not cfg.weights else list(cfg.weights)
        rec = {"pass": self.name, "settings": dict(vars(cfg)), "rounds": rounds,
               "layer_sparsity": {n: state.sparsity(n) for n in targets},
               "sparsity": rounds[-1]["sparsity"], "fitness": rounds[-1]["fitness_retrained"],
               "wall_seconds": time.perf_counter() - t0, "stop_reason": "done"}
        return state.replace(record=rec)

    def _final_targets(self, state: ModelState, ctx: PassContext) -> float | dict[str, float]:
        """The global target (scope=global), else the final per-layer targets the rounds approach."""
        cfg = self.config
        if cfg.scope == "global" and not cfg.layer_sparsity:
            if cfg.sparsity is None:
                raise EvonnxError(f"{self.name}: give a global `sparsity` or a `layer_sparsity` dict")
            return float(cfg.sparsity)
        layers, ev = common.setup(state, ctx, cfg)
        targets, _ = common.layer_targets(state, ev, layers, cfg, "magnitude")
        return targets

"""Directed Evolution sparsification: evolve zero-sets that keep the student closest to the teacher.

Each layer goes from its current density to its target in `steps` geometric steps, layers visited in
graph order, round after round. At each step an evolutionary search (passes/sparsity/evolve.py) picks
the entries to zero, scoring candidates by the fitness against the teacher through cheap suffix
evaluation (passes/sparsity/suffix.py); the winner is committed and, with `refit`, the survivors are
re-fitted to the teacher's layer outputs. A global target is split across layers by measured
sensitivity. The run checkpoints after every step and resumes bit-identically.

Embedding tables (a weight read only by Gather on its rows, [vocab, dim]) are not pruned: a row's effect is
observed only for the tokens the calibration data holds, so most rows would be judged on no data at all.
They stay exact here and go to the bit allocation, whose per-row error does not depend on the data.

Transformer activations [batch, tokens, features] (or [batch, heads, tokens, d], or [batch*tokens, d]
after a Reshape) count every token as a row of the layer's input, like a Gemm's; with an attention-mask
input, rows of padding tokens are left out of the fitness, the priors and the re-fit (sparsity/tokens.py).
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass

import numpy as np

from evonnx.errors import EvonnxError
from evonnx.passes.base import Pass, PassContext, param, register
from evonnx.passes.progress import progress
from evonnx.passes.sparsity import checkpoint, common, sparsegpt
from evonnx.passes.sparsity import targets as tg
from evonnx.passes.sparsity.evolve import SearchSettings, rank01, search
from evonnx.passes.sparsity.suffix import LayerView
from evonnx.passes.state import ModelState

log = logging.getLogger(__name__)

PRIORS = ("magnitude", "wanda", "hessian")
FINISH_SHARE = 0.5  # of its time limit the most a search that finishes (on_budget="finish") keeps for the finish


@register
class DirectedEvolution(Pass):
    """Sparsify by directed evolution of candidate zero-sets, scored against the teacher."""

    name = "directed-evolution"

    @dataclass
    class Config(common.TargetConfig):
        max_evaluations: int = param(0, "stop after this many candidate evaluations (0: no limit)")
        time_limit: float = param(0.0, "stop after this many seconds, resumed runs included (0: no limit)")
        on_budget: str = param("stop", "when a budget stops the search: stop (best state so far) | finish (reach "
                                        "the targets by the hessian/wanda prior, no search)")
        compensate: bool = param(True, "a finish without re-fits prunes each matrix layer (inputs up to 2048 wide) "
                                       "with its error compensated on its later inputs (SparseGPT, "
                                       "passes/sparsity/sparsegpt.py)")
        steps: int = param(8, "geometric density steps from the current to the target sparsity, per layer")
        population: int = param(16, "candidates kept per generation")
        generations: int = param(6, "generations per step")
        pool: float = param(2.0, "candidates draw from the pool x n entries the priors rate safest")
        mutation: float = param(0.05, "fraction of a child's entries swapped by mutation")
        priors: list = param(list(PRIORS), "priors that direct proposals: magnitude, wanda, hessian")
        credit: float = param(0.5, "weight of the learned per-entry survival credit in proposals (reset when "
                                   "a re-fit changes the layer)")
        nest: str = param("none", "after DE picks a set larger by nest_ratio, zero its subset of smallest "
                                  "magnitude | hessian saliency (none: zero DE's set)")
        nest_ratio: float = param(0.25, "how much larger DE's set is when nesting")
        chunk: float = param(0.01, "most entries one search zeroes, as a fraction of all pruned weights "
                                   "(smaller: cheaper candidates, more searches)")
        resume: bool = param(True, "resume from the work dir's checkpoint of the same run")

    def run(self, state: ModelState, ctx: PassContext) -> ModelState:
        cfg = self.config
        bad = set(cfg.priors) - set(PRIORS)
        if bad or not cfg.priors:
            raise EvonnxError(f"directed-evolution: priors must be among {PRIORS}, got {cfg.priors}")
        return _Run(cfg, state, ctx).execute()


class _Run:
    """One run's mutable state: student, schedule position, RNG, credits, counters; checkpointable."""

    def __init__(self, cfg, state: ModelState, ctx: PassContext):
        self.cfg, self.ctx, self.t_start = cfg, ctx, time.perf_counter()
        self.layers, self.ev = common.setup(state, ctx, cfg, embeddings=False)
        self.teacher_state = state
        self.dir = ctx.pass_dir(DirectedEvolution.name)
        self.settings = SearchSettings(cfg.population, cfg.generations, cfg.pool, cfg.mutation, cfg.credit)
        self.fp = checkpoint.fingerprint(state.model, ctx.calib.inputs, asdict(cfg), ctx.seed, state.weights, state.held)
        self.elapsed_before, self.log_lines, self.steps_log = 0.0, 0, []
        self.reserve = self._finish_reserve()
        loaded = checkpoint.load(self.dir / "checkpoint.npz", self.fp) if (self.dir and cfg.resume) else None
        if loaded:
            self._restore(*loaded)
        else:
            self._start(state)

    # -- setup / checkpoint -------------------------------------------------------------------------------
    def _start(self, state: ModelState) -> None:
        prior = "hessian" if self.cfg.refit else "wanda"
        bar = progress(len(self.layers), "directed-evolution: sensitivities", self.ctx.progress)
        self.targets, self.curves = common.layer_targets(state, self.ev, self.layers, self.cfg, prior,
                                                         stop=lambda: self.exhausted() is not None, bar=bar)
        bar.close()
        if len(self.curves) < len(self.layers) and self.cfg.allocation == "sensitivity" and not self.cfg.layer_sparsity:
            log.info(f"directed-evolution: the budget ran out measuring sensitivities "
                          f"({len(self.curves)}/{len(self.layers)} layers): the target is split by LAMP scores")
        self.student = state
        self.density0 = {l.weight: float(common.mask_of(state, l).mean()) for l in self.layers}
        self.position = (1, 0)
        self.rng = np.random.default_rng([self.ctx.seed, 0xDE])
        self.credit: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        if self.dir:
            (self.dir / "log.jsonl").write_text("")
        self._save()

    def _save(self) -> None:
        if not self.dir:
            return
        header = {"fingerprint": self.fp, "targets": self.targets, "curves": self.curves, "density0": self.density0,
                  "position": list(self.position), "rng": self.rng.bit_generator.state,
                  "evaluations": self.ev.counter.evaluations, "eval_seconds": self.ev.counter.seconds,
                  "by_layer": self.ev.counter.by_layer, "elapsed": self.elapsed(), "log_lines": self.log_lines,
                  "steps_log": self.steps_log}
        checkpoint.save(self.dir / "checkpoint.npz", header, {
            "weights": self.student.weights, "masks": self.student.masks,
            "credit_sums": {n: s for n, (s, _) in self.credit.items()},
            "credit_counts": {n: c for n, (_, c) in self.credit.items()}})

    def _restore(self, header: dict, groups: checkpoint.Groups) -> None:
        self.targets, self.curves, self.density0 = header["targets"], header["curves"], header["density0"]
        self.position = tuple(header["position"])
        self.rng = np.random.default_rng()
        self.rng.bit_generator.state = header["rng"]
        c = self.ev.counter
        c.evaluations, c.seconds, c.by_layer = header["evaluations"], header["eval_seconds"], header["by_layer"]
        self.elapsed_before, self.log_lines, self.steps_log = header["elapsed"], header["log_lines"], header["steps_log"]
        self.student = self.teacher_state.replace(weights=groups["weights"], masks=groups["masks"])
        self.credit = {n: (s, groups["credit_counts"][n]) for n, s in groups["credit_sums"].items()}
        path = self.dir / "log.jsonl"
        lines = path.read_text().splitlines(keepends=True)[: self.log_lines] if path.exists() else []
        path.write_text("".join(lines))
        log.info(f"directed-evolution: resumed at round {self.position[0]}, layer {self.position[1]}")

    # -- budget ------------------------------------------------------------------------------------------
    def elapsed(self) -> float:
        return self.elapsed_before + time.perf_counter() - self.t_start

    def exhausted(self) -> str | None:
        if self.cfg.max_evaluations and self.ev.counter.evaluations >= self.cfg.max_evaluations:
            return "max_evaluations"
        if self.cfg.time_limit and self.elapsed() >= self.cfg.time_limit - self.reserve:
            return "time_limit"
        return None

    def _finish_reserve(self) -> float:
        """Seconds of the time limit the search leaves for a finish (on_budget="finish"): what re-fitting every
        layer takes, or pruning them by SparseGPT, at most FINISH_SHARE of the limit."""
        cfg = self.cfg
        if not cfg.time_limit or cfg.on_budget != "finish":
            return 0.0
        cost = (common.refit_seconds(self.layers, cfg) if cfg.refit
                else sparsegpt.seconds(self.layers, common.MAX_INVERSE) if cfg.compensate else 0.0)
        return min(cost, FINISH_SHARE * cfg.time_limit)

    def _cannot_sweep(self) -> bool:
        """Whether a search that finishes (on_budget="finish") cannot visit each layer once in the time its limit
        leaves it (population x generations candidates a visit, each about a forward pass on the fitness samples).
        It would then zero the first density step of a few layers and leave every other zero to the finish: the
        finish alone reaches the same targets, and the time goes to what comes after."""
        cfg = self.cfg
        if not cfg.time_limit or cfg.on_budget != "finish" or self.position[0] > 1:
            return False
        visit = self.ev.forward_at_start * cfg.population * cfg.generations
        left = cfg.time_limit - self.reserve - self.elapsed()
        unvisited = len(self.layers) - self.position[1]
        if left >= visit * unvisited:
            return False
        log.info(f"directed-evolution: {left:.0f} s of search visit about {left / visit:.1f} of {unvisited} "
                 f"layers ({visit:.1f} s each): the finish alone reaches the targets")
        return True

    def _affords(self, seconds: float, keep: float = 0.0) -> bool:
        """Whether `seconds` more fit the time limit with `keep` seconds of it left over."""
        return not self.cfg.time_limit or self.elapsed() + seconds + keep <= self.cfg.time_limit

    def _affords_refit(self, layer, keep: float = 0.0) -> bool:
        """Whether re-fitting `layer` fits the time limit with `keep` seconds of it left over."""
        return self.cfg.refit and layer.fast and self._affords(common.refit_seconds([layer], self.cfg), keep)

    def _credit(self, layer) -> tuple[np.ndarray, np.ndarray]:
        """The layer's survival credit (sums, counts), float32, made at its first search: a run limited in time
        visits few layers, and two arrays the size of every layer are twice the model."""
        if layer.weight not in self.credit:
            self.credit[layer.weight] = (np.zeros(layer.size, np.float32), np.zeros(layer.size, np.float32))
        return self.credit[layer.weight]

    def zeros_at(self, layer, t: int) -> int:
        """Zero count of `layer` after step t of the geometric density schedule (exact target at the end)."""
        target = tg.zero_count(layer.size, self.targets[layer.weight])
        if t >= self.cfg.steps:
            return target
        d0, d1 = self.density0[layer.weight], 1.0 - target / layer.size
        d = d0 * (d1 / d0) ** (t / self.cfg.steps) if d1 > 0 and d0 > 0 else d0 + (d1 - d0) * t / self.cfg.steps
        return min(target, layer.size - int(round(d * layer.size)))

    # -- the run -----------------------------------------------------------------------------------------
    def execute(self) -> ModelState:
        cfg, layers = self.cfg, self.layers
        total = cfg.steps * len(layers)
        done = (self.position[0] - 1) * len(layers) + self.position[1]
        bar = progress(total, "directed-evolution", self.ctx.progress, done)
        stop = "time_limit" if self._cannot_sweep() else self._search(bar)
        bar.close()
        stop = stop or "done"
        if stop != "done" and cfg.on_budget == "finish":
            self._finish()
        forward = self.ev.forward_at_start
        c = self.ev.counter
        per_eval = c.seconds / max(c.evaluations, 1)
        rec = common.record(DirectedEvolution.name, cfg, self.student, layers, self.ev, self.t_start, stop_reason=stop,
                            targets=self.targets, sensitivity=self.curves, eval_seconds=c.seconds,
                            evaluations_per_second=c.evaluations / max(self.elapsed(), 1e-9),
                            cost_per_candidate=per_eval, forward_seconds=forward,
                            cost_ratio=per_eval / max(forward, 1e-12), evaluations_by_layer=dict(c.by_layer),
                            steps=self.steps_log)
        rec["wall_seconds"] = self.elapsed()
        log.info(f"directed-evolution: stopped by {stop}; sparsity {rec['sparsity']:.3f}, fitness "
                      f"{rec['fitness']:.4g}, {c.evaluations} evaluations, {rec['evaluations_per_second']:.0f}/s, "
                      f"{rec['cost_ratio']:.2f}x a baked forward per candidate")
        return self.student.replace(record=rec)

    def _search(self, bar) -> str | None:
        """The search from the schedule's position on; the budget that stopped it, if any."""
        layers = self.layers
        for t in range(self.position[0], self.cfg.steps + 1):
            for j in range(self.position[1] if t == self.position[0] else 0, len(layers)):
                stop = self.exhausted()
                if stop:
                    return stop
                self._step(layers[j], t, bar)
                self.position = (t, j + 1) if j + 1 < len(layers) else (t + 1, 0)
                self._save()
                bar.update(1)
        return None

    def _step(self, layer, t: int, bar) -> None:
        cfg = self.cfg
        mask = common.mask_of(self.student, layer)
        n = self.zeros_at(layer, t) - int((~mask).sum())
        if n <= 0:
            return
        view = self.ev.visit(layer, self.student)
        need_x = layer.fast and (cfg.refit or "hessian" in cfg.priors or cfg.nest == "hessian")
        data = view.refit_data(seed=t) if need_x else None
        kinds = list(dict.fromkeys([*cfg.priors, *(["hessian"] if cfg.nest == "hessian" else [])]))
        pri = common.priors(view, kinds, cfg.ridge, data[0] if data else None)
        cs, cc = self._credit(layer)
        cap = max(1, int(cfg.chunk * sum(l.size for l in self.layers)))
        keep = mask.ravel()
        ranks = {}
        for k, v in pri.items():  # ranks of the entries alive at the visit's start, computed once
            if k in cfg.priors:
                ranks[k] = np.full(layer.size, np.inf)
                ranks[k][keep] = rank01(v[keep])
        keep, remaining, fit, evaluations, prior_fit = mask.ravel().copy(), n, None, 0, []

        def on_generation(info: dict) -> None:
            info.update({"round": t, "layer": layer.weight, "evaluations_total": self.ev.counter.evaluations,
                         "elapsed": round(self.elapsed(), 3)})
            self._log(info)
            bar.set_postfix(gen=info["generation"], layer=layer.weight[-12:], fit=f"{info['best']:.4g}",
                            evs=f"{self.ev.counter.evaluations / max(self.elapsed(), 1e-9):.0f}/s")

        while remaining > 0 and self.exhausted() is None:  # searches of at most `cap` entries each
            size = min(remaining, cap)
            alive = np.flatnonzero(keep)
            n_search = size if cfg.nest == "none" else min(len(alive), int(np.ceil(size * (1 + cfg.nest_ratio))))
            res = search(alive, n_search, {k: v[alive] for k, v in ranks.items()}, cs, cc, view.use_pool,
                         view.evaluate_members, self.rng, self.settings, lambda: self.exhausted() is None,
                         on_generation)
            chosen, fit = res.chosen, res.fitness
            if n_search > size:
                nest_score = pri.get(cfg.nest, pri.get("magnitude", next(iter(pri.values()))))
                chosen = np.sort(chosen[np.argsort(nest_score[chosen], kind="stable")[:size]])
                fit = float(view.evaluate([chosen])[0])
            view.apply(chosen)
            keep[chosen] = False
            remaining -= size
            evaluations += res.evaluations
            prior_fit.append(min(res.prior_fitness.values()) if res.prior_fitness else fit)
        if fit is None:
            return
        new_mask = keep.reshape(mask.shape)
        w_mat, bias = view.w_mat, None
        fit_refit = None
        if self._affords_refit(layer, self.reserve):
            w_mat, bias, _ = common.refit_layer(view, new_mask, view.w_mat, cfg, data)
            fit_refit = view.evaluate_dense(w_mat, bias)
            # credits scored the old values: after a re-fit they mislead (measured: 95 % lenet300 drop 2.2 pt
            # with them kept, 1.6 without), so the layer starts afresh
            self.credit.pop(layer.weight, None)
        self.student = common.commit(self.student, layer, new_mask, w_mat, bias)
        entry = {"round": t, "layer": layer.weight, "zeroed": int(n - remaining), "sparsity": float(1 - new_mask.mean()),
                 "fitness": fit, "last_best_prior_fitness": prior_fit[-1], "fitness_refit": fit_refit,
                 "searches": len(prior_fit), "evaluations": evaluations}
        self.steps_log.append(entry)
        self._log({"event": "step", **entry, "elapsed": round(self.elapsed(), 3)})
        bar.set_postfix(layer=layer.weight[-12:], sparsity=f"{entry['sparsity']:.3f}",
                        fit=f"{fit_refit if fit_refit is not None else fit:.4g}")

    def _finish(self) -> None:
        """Reach every layer's exact target by its best prior (and re-fit), or without re-fits by SparseGPT
        (`compensate`), without search: one probe run gives every layer's activations (upstream changes made
        here are not seen downstream: a budget ran out). Under a time limit a layer is re-fitted only while what
        is left of it still pays for compensating the layers after it (a re-fit costs more: spending the time on
        the first layers would leave the rest uncompensated), else compensated while that fits; the rest keep
        their survivors as they are."""
        pending = [(layer, n) for layer in self.layers
                   if (n := tg.zero_count(layer.size, self.targets[layer.weight])
                       - int((~common.mask_of(self.student, layer)).sum())) > 0]
        acts, skipped = None, []
        for i, (layer, n) in enumerate(pending):
            mask = common.mask_of(self.student, layer)
            if acts is None:
                acts = self.ev.run_probe(self.ev.current(self.student))
            view = LayerView(self.ev, layer, self.student, self.ev.current(self.student), acts)
            data = view.refit_data() if layer.fast else None
            rest = [other for other, _ in pending[i + 1:]] if self.cfg.compensate else []
            refit = self._affords_refit(layer, keep=sparsegpt.seconds(rest, common.MAX_INVERSE))
            compensate = (not refit and data is not None and self.cfg.compensate and view.k <= common.MAX_INVERSE)
            if compensate and self._affords(sparsegpt.seconds([layer], common.MAX_INVERSE)):
                w_mat, new_mask = sparsegpt.prune(view.w_mat, mask, data[0], int((~mask).sum()) + n)
                self.student = common.commit(self.student, layer, new_mask, w_mat, None)
                continue
            if (self.cfg.refit or compensate) and layer.fast and not refit:
                skipped.append(layer.weight)
            pri = common.priors(view, ["hessian" if refit else "wanda"], self.cfg.ridge, data[0] if data else None)
            score = np.where(mask.ravel(), next(iter(pri.values())), -np.inf)  # zeros stay zero
            new_mask = tg.keep_mask(score, int((~mask).sum()) + n).reshape(mask.shape)
            w_mat, bias = view.w_mat, None  # commit zeroes what the mask drops
            if refit:
                w_mat, bias, _ = common.refit_layer(view, new_mask, view.w_mat, self.cfg, data)
            self.student = common.commit(self.student, layer, new_mask, w_mat, bias)
        if skipped:
            log.info(f"directed-evolution: no time left to re-fit or compensate {len(skipped)} layer(s) in the finish "
                     f"({', '.join(skipped[:4])}{', …' if len(skipped) > 4 else ''}): their survivors as they are")

    def _log(self, entry: dict) -> None:
        if not self.dir:
            return
        with open(self.dir / "log.jsonl", "a") as fh:
            fh.write(json.dumps(entry) + "\n")
        self.log_lines += 1

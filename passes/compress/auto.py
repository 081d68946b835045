"""`sparsity="auto"`: Directed Evolution climbs a ladder of global sparsities (the kept fraction halves each
rung: 50 %, 75 %, 87.5 %, …), each rung continuing from the last accepted student, then bisects between
the last rung within budget and the first beyond it, unless a bisection would leave the bit allocation
less time than its full measurement needs (bits then pay more than a little sparsity). A rung is accepted
when its drop against the teacher in the run's task metric (passes/engine/tasks.py), taken at measured + 1
standard error on the data the search fits to, is within half of `max_drop`; the bit allocation gets what is
left of `max_drop`. The accepted rungs are returned too: the budget guard falls back on them when the
held-out check fails."""
from __future__ import annotations

import dataclasses
import logging
import time

import numpy as np

from evonnx.passes.base import PassContext
from evonnx.passes.bit_allocation import budget_loss
from evonnx.passes.compress.container import describe, step
from evonnx.passes.compress.default import default_pipeline
from evonnx.passes.compress.timing import SEARCH_SHARE, BitCosts, Budget, curves_or_lamp
from evonnx.passes.dead_units import DeadUnits
from evonnx.passes.directed_evolution import DirectedEvolution
from evonnx.passes.pipeline import Pipeline
from evonnx.passes.quant.apply import Fidelity
from evonnx.passes.sparsity import sparsegpt
from evonnx.passes.sparsity.common import MAX_INVERSE, refit_seconds
from evonnx.passes.sparsity.layers import analyse
from evonnx.passes.state import ModelState

log = logging.getLogger(__name__)

AUTO_DIR = "auto"
LADDER = tuple(1 - 0.5 ** k for k in range(1, 7))  # 0.5 … 0.984: the kept fraction halves each rung
BISECTIONS = 2
AUTO_SHARE = 0.5  # of --max-drop the auto sparsity may spend; the bit allocation gets what is left
AUTO_Z = 1.0  # a rung's drop is taken at measured + AUTO_Z standard errors
RUNG_FORWARDS = 8  # what a rung costs beyond its search and its one-shot finish, in passes over the calibration set
OVERRUN = 1.5  # a rung's set-up and finish may take this much longer than reckoned (transformer-25M's first: 1.1x)


def auto_sparsity(state: ModelState, ctx: PassContext, engine, bits: int | str, max_drop: float,
                  time_limit: float | None, prune: list[str], kept: list[str], budget: Budget,
                  forward: float = 0.0, costs: BitCosts = BitCosts()
                  ) -> tuple[ModelState, list[dict], list[dict], list[ModelState]]:
    """sparsity="auto" (see the module docstring): the ladder and bisection of Directed Evolution runs,
    then the bit stage with the rest of the budget. Returns the state, the passes that made it, the trials.
    With `time_limit`, a rung starts only when the time left pays for its search and for the most a rung
    has cost beyond its search so far (setting up, finishing; before the first, RUNG_FORWARDS passes over
    the calibration set and the SparseGPT finish's estimate), and not when it might leave no time for a bit
    allocation the time left now pays for (every layer at 8 bits instead; that cost taken OVERRUN times). It
    splits its target by LAMP scores when its own share cannot pay for sensitivity curves (`curves_or_lamp`),
    and the bit stage gets what is left (`forward`: seconds of one pass over the calibration set, and `costs` the
    bit allocation's other costs, to size it). Also returns the accepted rungs' students, least sparse first."""
    limit = AUTO_SHARE * max_drop
    fidelity = Fidelity(engine, {n: state.current(n) for n in engine.weight_names}, ctx.metric)
    metric = ctx.metric.label
    loss = budget_loss("task", AUTO_Z)
    start = time.perf_counter()
    deadline = start + SEARCH_SHARE * time_limit if time_limit else None
    layers = analyse(state, prune) if time_limit else []
    finish = sparsegpt.seconds(layers, MAX_INVERSE)
    refits = refit_seconds(layers, DirectedEvolution.Config())
    best, best_drop, passed, failed, bisected = state, 0.0, 0.0, None, 0
    overhead = RUNG_FORWARDS * forward + finish
    steps, trials, rungs = [], [], []
    while (nxt := _next_sparsity(passed, failed, bisected)) is not None:
        target, left = nxt
        params: dict = {"sparsity": target, **({"weights": prune} if kept else {})}
        given = None
        if deadline is not None:
            remaining = deadline - time.perf_counter() - overhead
            if remaining <= 0:
                log.info(f"auto sparsity: no time left for a rung at {target:.4f} (its set-up and finish take "
                         f"about {overhead:.0f} s)")
                break
            given = round(remaining / left, 3)
            now_left = start + time_limit - time.perf_counter()
            bits_left = now_left - given - overhead
            if failed is not None and bits_left < Budget.full_bits_seconds(len(prune), forward, costs):
                log.info(f"auto sparsity: no bisection below {failed:.4f}: the bit allocation needs the time left")
                break
            worst = now_left - given - OVERRUN * overhead
            if (Budget.bits_for(len(prune), forward, worst, costs) is None
                    and Budget.bits_for(len(prune), forward, now_left, costs) is not None):
                log.info(f"auto sparsity: no rung at {target:.4f}: it might leave the bit allocation no time")
                break
            split = budget.de or curves_or_lamp(len(prune), forward, given, refits)
            # the rung's clock starts before its set-up, and it keeps time for its finish
            # (directed_evolution.FINISH_SHARE): its limit covers both, as the plan does
            params.update(time_limit=round(given + overhead, 3), on_budget="finish", **split)
        de = DirectedEvolution(**params)
        sub = ctx.workdir / AUTO_DIR / f"{len(trials):02d}-{target:.4f}" if ctx.workdir else None
        t0 = time.perf_counter()
        student = de.run(best, dataclasses.replace(ctx, workdir=sub))
        if given is not None:
            overhead = max(overhead if trials else 0.0, time.perf_counter() - t0 - given)
        drop = float(loss(fidelity.evaluate([{n: student.current(n) for n in engine.weight_names}])[0]))
        ok = drop <= limit
        trials.append({"sparsity": target, "reached": round(student.global_sparsity(), 4), "drop": round(drop, 4),
                       "limit": limit, "kept": ok})
        log.info(f"auto sparsity {target:.4f}: {metric} drop {drop:.3f} points, "
                 + (f"within {limit:g}" if ok else f"beyond {limit:g}: rejected"))
        bisected += failed is not None
        if ok:
            best, best_drop, passed = student, drop, target
            steps.append(step(de))
            rungs.append(student)
        else:
            failed = target
    left_over = min(max(max_drop - best_drop, 0.0), max_drop)  # a lucky gain on the fitted samples buys nothing
    log.info(f"auto sparsity: kept {passed:.4f} (drop {best_drop:.3f} of {limit:g}); "
                  f"the bit stage gets {left_over:.3f}")
    left = None
    if time_limit:
        left = max(start + time_limit - time.perf_counter(), 1e-3)
        budget = dataclasses.replace(budget, bits=Budget.bits_for(len(prune), forward, left, costs))
        log.info(f"auto sparsity: {left:.0f} s left for the bits: "
                 + (dataclasses.replace(budget, de={}).describe() or "the full bit allocation"))
    rest = Pipeline([DeadUnits(), *default_pipeline(0, bits, left_over, left, keep=kept, budget=budget).passes])
    return rest.run(best, ctx), steps + describe(rest), trials, rungs


def _next_sparsity(passed: float, failed: float | None, bisected: int) -> tuple[float, int] | None:
    """The next global sparsity to try and how many trials are left at most (for splitting the time)."""
    if failed is None:
        rungs = [s for s in LADDER if s > passed + 1e-6]
        return (rungs[0], len(rungs) + BISECTIONS) if rungs else None
    if bisected >= BISECTIONS:
        return None
    return round(1 - float(np.sqrt((1 - passed) * (1 - failed))), 4), BISECTIONS - bisected

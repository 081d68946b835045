"""The budget guard: each result, most compressed first, is encoded, decoded, and measured against the teacher
on the held-out samples no pass fitted to; the first within budget ships.

A result is within budget when its drop's one-sided 95 % upper bound (measured + 1.645 standard errors) is
at most `--max-drop`. Where the bits were searched, the first fallbacks are, smallest first, the allocations the
search found within smaller shares of the budget, the same allocation a little wider where most of its damage
is, and one and two bits wider a layer (`finer`). The budget-driven default then
falls back on safer results (the accepted Directed Evolution rungs at 8 bits, then no pruning at 8 bits, then
the exact weights); a fixed recipe has only its own result, plus the same pruning at 8 bits where the bits
were searched. Nothing within budget: BudgetError, exit code 3, nothing written.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np

from evonnx.errors import BudgetError
from evonnx.passes.base import PassContext
from evonnx.passes.compress.container import Verified, describe, encode_and_verify
from evonnx.passes.compress.default import fixed_bits
from evonnx.passes.dead_units import DeadUnits
from evonnx.passes.engine.calib import CalibData
from evonnx.passes.engine.tasks import Z_CHECK, Drop, TaskMetric, per_sample, real_tokens
from evonnx.passes.pipeline import Pipeline
from evonnx.passes.quant.layer import QuantSpec
from evonnx.passes.state import ModelState

log = logging.getLogger(__name__)

Candidate = tuple[str, ModelState, list[dict]]  # (what it is, the state, the passes that made it)


@dataclass
class Shipped:
    """The result that passed the guard, with its held-out drop and what was tried before it."""

    what: str
    state: ModelState
    steps: list[dict]
    verified: Verified
    drop: Drop
    data: str
    rejected: list[dict]


class Guard:
    """Measures results against the teacher on the held-out samples (or, when there are too few to hold any
    out, on the calibration samples, and says so): first with their weights fed to one session, to pass over
    clear failures without encoding them, then as the decoded container that would ship."""

    def __init__(self, state: ModelState, ctx: PassContext, held: CalibData | None, task: TaskMetric,
                 max_drop: float | None):
        self.task, self.max_drop = task, max_drop
        screening = None if max_drop is not None else []  # weights fed only where results are screened
        self.engine = (PassContext(held, device=ctx.device, batch_size=ctx.batch_size).engine(state, screening)
                       if held is not None else None)
        self.data = (f"held-out data ({held.num_samples} samples no pass fitted to)" if held is not None else
                     "the calibration samples the search fitted to (too few to hold any out): optimistic")

    def _drop(self, engine, outputs: list) -> Drop:
        if all(np.array_equal(t, o) for t, o in zip(engine.teacher, outputs)):  # the teacher's very outputs
            return Drop(self.task.label, 0.0, 0.0, engine.calib.num_samples, {"identical": True})
        return self.task.drop(per_sample(engine.teacher, engine.axes), per_sample(outputs, engine.axes),
                              engine.calib.labels, real_tokens(engine.calib))

    def screen(self, state: ModelState) -> Drop | None:
        """The held-out drop of `state` with its weights fed to the held-out session (None: no budget, no
        held-out share, or weights the session does not take)."""
        names = self.engine.weight_names if self.engine is not None else []
        if self.max_drop is None or not names or any(state.current(n).shape != self.engine.original[n].shape
                                                      for n in names):
            return None
        if all(np.array_equal(state.current(n), self.engine.original[n]) for n in names):
            return None  # the teacher's weights: fed, ONNX Runtime rounds otherwise than baked; check as shipped
        return self._drop(self.engine, self.engine.outputs({n: state.current(n) for n in names}))

    def measure(self, verified: Verified, fit_engine) -> Drop:
        if self.engine is None:
            return self._drop(fit_engine, verified.measured)
        return self._drop(self.engine, verified.held_out)

    def within(self, drop: Drop) -> bool:
        return self.max_drop is None or drop.upper(Z_CHECK) <= self.max_drop + 1e-9

    def ship(self, groups: list[Iterable[Candidate]], fit_engine, meta, deadline: float | None = None) -> Shipped:
        """The first candidate within budget, taken from `groups` in order (`meta(steps)`: the container's
        metadata). Once a candidate is rejected past `deadline` (a time.perf_counter() value), no more are made
        but the last group's: the fallbacks that fit the time a run reserves (8 bits, the exact weights)."""
        rejected, late = [], False
        for i, group in enumerate(groups):
            if late and i < len(groups) - 1:
                continue
            for what, state, steps in group:
                drop, verified = self.screen(state), None
                if drop is None or self.within(drop):
                    verified = encode_and_verify(state, fit_engine, meta(steps), self.engine)
                    drop = self.measure(verified, fit_engine)
                    if self.within(drop):
                        return Shipped(what, state, steps, verified, drop, self.data, rejected)
                rejected.append({"result": what, **drop.as_dict()})
                log.info(f"{what}: {drop.describe()} on {self.data}; its 95 % bound {drop.upper(Z_CHECK):.3g} is "
                         f"beyond --max-drop {self.max_drop:g}")
                del state, verified  # a rejected result's weights go before the next one is made
                late = i < len(groups) - 1 and deadline is not None and time.perf_counter() > deadline
                if late:
                    log.info("time limit reached: on to the last fallbacks")
                    break
        raise BudgetError(self._failure(rejected))

    def _failure(self, rejected: list[dict]) -> str:
        last = rejected[-1]
        text = (f"no result within --max-drop {self.max_drop:g} ({last['metric']}, at the 95 % bound on "
                f"{self.data}): the safest tried, {last['result']}, lost {last['points']:.3g} points "
                f"± {last['ci95']:.3g}; nothing written")
        if self.engine is not None and last["se"] > 0 and Z_CHECK * last["se"] > self.max_drop:
            text += (f". With {last['n']} held-out samples the bound alone is {Z_CHECK * last['se']:.3g} points: "
                     "more calibration samples narrow it")
        return text + ". Leave --sparsity and --bits unset for the budget-driven default, or raise --max-drop"


def searched_first(result: ModelState, steps: list[dict],
                   *fallbacks: Iterable[Candidate]) -> list[Iterator[Candidate]]:
    """The guard's groups: the searched result alone, then each group of `fallbacks`; the result is held only
    until the guard has moved past it (the caller drops its own reference)."""

    def searched(candidate: Candidate) -> Iterator[Candidate]:
        yield candidate

    group = searched(("the searched result", result, steps))
    del result
    return [group, *map(iter, fallbacks)]


def bit_record(result: ModelState) -> dict | None:
    """The bit allocation's record in `result`'s history (None: its bits were not searched)."""
    return next((h for h in reversed(result.history) if h.get("pass") == "bit-allocation"), None)


def safer(rungs: list[ModelState], original: ModelState, ctx: PassContext, bits: int | str,
          keep: list[str]) -> Iterator[Candidate]:
    """The budget-driven default's fallbacks, most compressed first: each accepted Directed Evolution rung
    (sparsest first) at 8 bits (or the fixed `bits`), then no pruning at those bits, then (bits searched)
    the exact weights, which are always within budget."""
    width = 8 if bits == "auto" else int(bits)
    quantize = Pipeline([fixed_bits(width, keep, quick=True)])
    for rung in reversed(rungs):
        pipe = Pipeline([DeadUnits(), *quantize.passes])
        yield f"sparsity {rung.global_sparsity():.3f} at {width} bits", pipe.run(rung, ctx), describe(pipe)
    yield f"no pruning, {width} bits", quantize.run(original, ctx), describe(quantize)
    if bits == "auto":
        yield "the exact weights", original, []


FINER = (1, 2)  # bits added to every layer of a searched allocation, in the fallbacks that keep its pruning
MOST_DAMAGE = 0.75  # the first fallback widens only the layers that carry this share of the estimated damage


def finer(record: dict | None, base: ModelState, ctx: PassContext, keep: list[str],
          steps: list[dict] = ()) -> Iterator[Candidate]:
    """A searched result's first fallbacks, smallest first by the search's own size estimates: the allocations
    its search found within smaller shares of the budget (the record's `tighter`), its bit allocation half a bit
    wider (entropy-sized grids) and one bit wider on the fewest layers that carry MOST_DAMAGE of its estimated
    damage (each layer's measured alone, summed as the search does), and every layer FINER bits wider (at most
    8; the same grids and rounding, the same other tensors), on `base`, the state the bit allocation started
    from. A search that fits the budget on the calibration samples can exceed it on held-out ones by a little:
    the tighter searches spend the bits where they buy the most, as the search did; a bit more a layer takes
    about three quarters off its drop (half a bit, half of it). `steps`: the passes that made `base`, for the
    container's metadata; `record`: the searched result's `bit_record`, which each fallback's history keeps
    (the report draws the search's trade-off from it)."""
    if record is None:
        return
    allocation = record["allocation"]
    options = [(f"the search within {alt['share']:.0%} of the budget", alt["allocation"])
               for alt in record.get("tighter", [])]
    most = _most_damage(record)
    if 0 < len(most) < len(allocation):
        rates = [n for n in most if QuantSpec.parse(allocation[n]).rate]
        if rates:
            options.append((f"the searched bits, half a bit wider on the entropy-sized grids of the layers with "
                            f"{MOST_DAMAGE:.0%} of the damage", _widened(allocation, rates, 0.5)))
        options.append((f"the searched bits, 1 wider on the layers with {MOST_DAMAGE:.0%} of the damage",
                        _widened(allocation, most, 1)))
    options += [(f"the searched bits, {extra} wider a layer", _widened(allocation, list(allocation), extra))
                for extra in FINER]
    options.sort(key=lambda option: _estimated_bytes(record, option[1], base))
    for what, chosen in options:
        layers = {**chosen, **{n: "raw" for n in keep}}
        pipe = Pipeline([DeadUnits(), *Pipeline([("quantize", {"layers": layers, "nontarget": record["nontarget_mode"],
                                                               "measure_alone": False})]).passes])
        out = pipe.run(base, ctx)
        start = len(base.history)  # the search that chose these bits goes before the passes that applied them
        out.history = [*out.history[:start], record, *out.history[start:]]
        yield what, out, [*steps, *describe(pipe)]


def _most_damage(record: dict) -> list[str]:
    """The fewest layers whose chosen option's damage alone sums to MOST_DAMAGE of all layers' (most first)."""
    damage = {n: max(next((d for label, _, d, _ in record["sensitivity"][n] if label == chosen), 0.0), 0.0)
              for n, chosen in record["allocation"].items()}
    order = sorted(damage, key=damage.get, reverse=True)
    reach = np.cumsum([damage[n] for n in order])
    return order[:int(np.searchsorted(reach, MOST_DAMAGE * reach[-1])) + 1] if len(order) and reach[-1] > 0 else []


def _estimated_bytes(record: dict, allocation: dict[str, str], base: ModelState) -> float:
    """The coded bytes of `allocation` by the search's estimates (its sensitivity rows); a width it did not try,
    from the nearest one it did of the same family, the entries' bits apart."""
    total = 0.0
    for name, label in allocation.items():
        tried = {row[0]: row[1] for row in record["sensitivity"][name]}
        if label in tried:
            total += tried[label]
            continue
        spec = QuantSpec.parse(label)
        same = [(QuantSpec.parse(t).bits, size) for t, size in tried.items() if QuantSpec.parse(t).family == spec.family]
        bits, size = min(same, key=lambda s: abs(s[0] - spec.bits))
        total += size + (spec.bits - bits) * base.table[name].size / 8
    return total


def _widened(allocation: dict[str, str], names: list[str], extra: float) -> dict[str, str]:
    """`allocation` with the layers `names` `extra` bits wider."""
    return {**allocation, **{n: _wider(allocation[n], extra) for n in names}}


def _wider(label: str, extra: float) -> str:
    spec = QuantSpec.parse(label)
    return label if spec.scheme == "raw" else f"{spec.family}@{min(spec.bits + extra, 8):g}"


def same_pruning(pruned: ModelState, ctx: PassContext, keep: list[str], steps: list[dict]) -> Iterator[Candidate]:
    """A fixed sparsity's one fallback when its bits were searched: the same pruning at 8 bits."""
    quantize = Pipeline([fixed_bits(8, keep, quick=True)])
    yield "the same pruning at 8 bits", quantize.run(pruned, ctx), steps + describe(quantize)


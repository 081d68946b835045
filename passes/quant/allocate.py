"""Bit allocation: per-layer sensitivity tables and the searches over them.

Every layer gets a list of options (spec, estimated coded bytes, measured damage when quantized alone),
cut to its Pareto frontier and sorted by bytes; `raw` (exact) always stays last, so keeping every layer
exact is always a feasible allocation. Searches return one option index per layer:

* `by_size`: least summed damage within a byte budget (exact knapsack: bytes are additive); with a joint
  measurement, the best-measured of the knapsack answers at slightly smaller budgets.
* `knapsack`: least bytes whose *measured* joint loss meets the budget. The knapsack runs on the
  additive damage estimate under a damage budget that is bisected against joint measurements, then
  `descend` tries single-layer downgrades on the best feasible point.
* `greedy`: from all-exact, repeatedly take the downgrade with the most bytes saved per unit of
  damage, keeping it when the joint measurement still meets the budget.

`max_joint` caps the joint measurements of `knapsack` and `greedy` (to fit a time limit): the search
stops at the best feasible point found by then; `by_size` measures as many answers as it is asked.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from evonnx.passes.quant.layer import Quantized, QuantSpec
from evonnx.passes.quant.search import knapsack, pareto

Choice = tuple[int, ...]
SIZE_TRIES = 8  # the knapsack's answers `by_size` measures, at budgets `step` apart


@dataclass
class Option:
    spec: QuantSpec
    quantized: Quantized
    bytes: float
    damage: float  # Measure.damage (a cosine task's mean drop, else KL) with this layer alone quantized
    drop: float  # loss under the budget's metric with this layer alone quantized
    folds: tuple[Quantized, ...] | None = None  # fitted without each fold of the samples (passes/quant/crossfit.py)


def frontier(options: list[Option], limit: float | None = None) -> list[Option]:
    """Pareto options by (bytes, damage), bytes ascending, without those whose own drop exceeds `limit`;
    raw (exact) is always kept, last, and any lossy option as large as raw goes."""
    raw = [o for o in options if o.spec.scheme == "raw"][:1]
    rest = [o for o in options if o.spec.scheme != "raw" and (limit is None or o.drop <= limit)
            and (not raw or o.bytes < raw[0].bytes)]
    if not rest:
        return raw
    keep = pareto(np.array([o.bytes for o in rest]), np.array([max(o.damage, 0.0) for o in rest]))
    return [rest[i] for i in keep] + raw


class Searcher:
    """Searches over per-layer frontiers with a joint check `loss(choice) -> float` (cached)."""

    def __init__(self, table: dict[str, list[Option]], loss: Callable[[dict[str, Option]], float], limit: float,
                 max_joint: int | None = None):
        self.names = list(table)
        self.table = table
        self._loss = loss
        self.limit = limit
        self.max_joint = max_joint
        self.cache: dict[Choice, float] = {}

    def spent(self) -> bool:
        """Whether the joint measurements have reached `max_joint`."""
        return self.max_joint is not None and len(self.cache) >= self.max_joint

    def options(self, choice: Choice) -> dict[str, Option]:
        return {n: self.table[n][i] for n, i in zip(self.names, choice)}

    def bytes(self, choice: Choice) -> float:
        return float(sum(o.bytes for o in self.options(choice).values()))

    def loss(self, choice: Choice) -> float:
        if choice not in self.cache:
            self.cache[choice] = self._loss(self.options(choice))
        return self.cache[choice]

    def ok(self, choice: Choice) -> bool:
        return self.loss(choice) <= self.limit

    def exact(self) -> Choice:
        return tuple(len(self.table[n]) - 1 for n in self.names)

    def knapsack(self, steps: int = 12, max_evals: int = 200) -> Choice:
        costs = [np.array([max(o.damage, 0.0) for o in self.table[n]]) for n in self.names]
        sizes = [np.array([o.bytes for o in self.table[n]]) for n in self.names]
        best = self.exact()
        def solve(budget: float) -> Choice:
            return tuple(knapsack(costs, sizes, budget))
        def consider(choice: Choice) -> bool:
            nonlocal best
            good = self.ok(choice)
            if good and self.bytes(choice) < self.bytes(best):
                best = choice
            return good
        hi = float(sum(c.max() for c in costs))
        if not consider(solve(hi)):
            positive = np.concatenate(costs)
            lo = max(float(positive[positive > 0].min()) / 2 if np.any(positive > 0) else hi, hi * 1e-9)
            consider(solve(0.0))
            for _ in range(steps):
                if hi <= lo * 1.02 or self.spent():
                    break
                mid = float(np.sqrt(lo * hi))
                if consider(solve(mid)):
                    lo = mid
                else:
                    hi = mid
        return self.descend(best, max_evals)

    def greedy(self, max_evals: int = 400) -> Choice:
        return self.descend(self.exact(), max_evals)

    def descend(self, choice: Choice, max_evals: int) -> Choice:
        """Single-layer moves to the next cheaper option, best bytes-per-damage first, while feasible."""
        frozen: set[int] = set()
        evals = 0
        while evals < max_evals and not self.spent():
            moves = []
            for layer, i in enumerate(choice):
                if layer in frozen or i == 0:
                    continue
                now, nxt = self.table[self.names[layer]][i], self.table[self.names[layer]][i - 1]
                saved = now.bytes - nxt.bytes
                extra = max(nxt.damage, 0.0) - max(now.damage, 0.0)
                moves.append((saved / max(extra, 1e-12), layer))
            if not moves:
                break
            _, layer = max(moves)
            trial = choice[:layer] + (choice[layer] - 1,) + choice[layer + 1:]
            evals += trial not in self.cache
            if self.ok(trial):
                choice = trial
            else:
                frozen.add(layer)
        return choice

    def by_size(self, budget: float, measure: Callable[[dict[str, Option]], float] | None = None,
                tries: int = SIZE_TRIES, step: float = 0.02) -> tuple[Choice | None, dict[Choice, float]]:
        """The least additive damage within `budget` bytes; with `measure`, the choice it scores lowest among
        the knapsack's answers at budget x (1, 1 - step, ...): the sum of single-layer damages misjudges
        joint effects, and every answer fits. Returns (choice, {candidate: measured})."""
        sizes = [np.array([o.bytes for o in self.table[n]]) for n in self.names]
        damage = [np.array([max(o.damage, 0.0) for o in self.table[n]]) for n in self.names]
        found = knapsack(sizes, damage, budget)
        if found is None or measure is None:
            return (None if found is None else tuple(found)), {}
        scores: dict[Choice, float] = {}
        for k in range(tries):
            alt = knapsack(sizes, damage, budget * (1 - step * k))
            if alt is not None and tuple(alt) not in scores:
                scores[tuple(alt)] = measure(self.options(tuple(alt)))
        return min(scores, key=scores.get), scores

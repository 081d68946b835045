"""Multiple-choice knapsack over per-layer options, solved exactly on a discretised budget.

Each layer offers options (cost, value); pick one per layer to minimise the summed value subject to the
summed cost staying within the budget. Costs are rounded *up* to budget/bins units, so an answer never
exceeds the true budget. O(layers x options x bins), vectorised over the bins.
"""
from __future__ import annotations

import numpy as np


def pareto(costs: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Indices of the options no other option beats on both cost and value (ties: first kept), by cost."""
    order = np.lexsort((values, costs))
    best, keep = np.inf, []
    for i in order:  # options per layer are few (tens): a plain scan is clearer than a vectorised one
        if values[i] < best:
            keep.append(i)
            best = values[i]
    return np.array(keep, dtype=np.int64)


def knapsack(costs: list[np.ndarray], values: list[np.ndarray], budget: float, bins: int = 4000) -> list[int] | None:
    """Per-layer option indices minimising sum(values) with sum(costs) <= budget; None if infeasible."""
    budget = float(budget)
    if budget < 0:
        return None
    unit = budget / bins if budget > 0 else 1.0
    inf = np.inf
    best = np.zeros(bins + 1)  # best[j]: least value of the layers so far with discretised cost <= j
    choices = []
    for cost, value in zip(costs, values):
        steps = np.ceil(np.maximum(np.asarray(cost, float), 0) / unit - 1e-9).astype(np.int64)
        new = np.full(bins + 1, inf)
        pick = np.full(bins + 1, -1, dtype=np.int64)
        for o, (s, v) in enumerate(zip(steps, np.asarray(value, float))):
            if s > bins:
                continue
            cand = np.full(bins + 1, inf)
            cand[s:] = best[:bins + 1 - s] + v
            better = cand < new
            new[better], pick[better] = cand[better], o
        best = new
        choices.append(pick)
    if not np.isfinite(best[bins]):
        return None
    chosen, j = [], bins
    for layer in range(len(costs) - 1, -1, -1):
        o = int(choices[layer][j])
        chosen.append(o)
        j -= int(np.ceil(max(float(costs[layer][o]), 0) / unit - 1e-9))
    return chosen[::-1]

"""The evolutionary search of one step: which n more entries of a layer to zero.

A candidate is a set of n entries drawn from a pool of the ~pool x n entries the priors rate safest.
Generation 0 holds each prior's own pick plus Gumbel-top-k samples around the combined prior at several
temperatures; each further generation breeds children by crossover (entries both parents share are
kept, the rest drawn from either parent by prior) and directed mutation (the least safe members swapped
for safe non-members), and keeps the best `population` of parents and children. Every evaluation also
updates a per-entry credit (mean z-scored fitness of the candidates holding it), a learned prior reused
in later generations and later steps.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np


@dataclass
class SearchSettings:
    population: int = 16
    generations: int = 6
    pool: float = 2.0
    mutation: float = 0.05
    credit_weight: float = 0.5
    temperatures: tuple[float, float] = (0.02, 0.5)


@dataclass
class SearchResult:
    chosen: np.ndarray  # indices (into the layer's flat [out, K] weight) to zero
    fitness: float
    evaluations: int
    generations: int
    prior_fitness: dict  # each prior's own pick's fitness (generation 0)
    stopped: bool  # the budget ended the search early


def rank01(values: np.ndarray) -> np.ndarray:
    """Ranks scaled to [0, 1] (0 = lowest), ties by index."""
    r = np.empty(len(values))
    r[np.argsort(values, kind="stable")] = np.arange(len(values))
    return r / max(len(values) - 1, 1)


def _topk_rows(keys: np.ndarray, k: int) -> np.ndarray:
    """Bool matrix marking the k largest keys of each row."""
    idx = np.argpartition(-keys, k - 1, axis=1)[:, :k] if k < keys.shape[1] else np.tile(np.arange(keys.shape[1]), (len(keys), 1))
    out = np.zeros(keys.shape, bool)
    np.put_along_axis(out, idx, True, axis=1)
    return out


def search(alive: np.ndarray, n: int, ranks: dict[str, np.ndarray], credit_sum: np.ndarray, credit_count: np.ndarray,
           prepare: Callable[[np.ndarray], None], evaluate: Callable[[np.ndarray], np.ndarray],
           rng: np.random.Generator, settings: SearchSettings, budget_left: Callable[[], bool],
           on_generation: Callable[[dict], None] | None = None) -> SearchResult:
    """Evolve sets of `n` entries of `alive` (flat indices) to zero; `ranks` are the priors' ranks in [0, 1]
    per alive entry (lower = safer).

    `prepare(pool)` is told the pool once; `evaluate(members)` scores a bool matrix [candidates, pool].
    `credit_sum`/`credit_count` are full-layer arrays updated in place.
    """
    s = settings
    base = np.mean(list(ranks.values()), axis=0)
    credit = credit_sum[alive] / (credit_count[alive] + 1.0)
    combined = base + s.credit_weight * credit
    m = int(min(len(alive), max(n, np.ceil(s.pool * n))))
    pool_local = np.argsort(combined, kind="stable")[:m]
    pool = alive[pool_local]
    q = rank01(combined[pool_local])
    prepare(pool)
    if m == n:
        f = evaluate(np.ones((1, m), bool))
        return SearchResult(pool, float(f[0]), 1, 0, {}, False)

    # generation 0: each prior's pick, the combined pick, and samples at spread temperatures
    seeds = [_topk_rows(-ranks[name][pool_local][None], n)[0] for name in ranks]
    seeds.append(_topk_rows(-q[None], n)[0])
    n_random = max(s.population - len(seeds), 0)
    temps = np.geomspace(*s.temperatures, n_random) if n_random else np.zeros(0)
    keys = -q[None] / temps[:, None] + rng.gumbel(size=(n_random, m))
    members = np.concatenate([np.array(seeds), _topk_rows(keys, n)]) if n_random else np.array(seeds)
    fit = _score(members, pool, evaluate, credit_sum, credit_count)
    prior_fitness = {name: float(fit[i]) for i, name in enumerate([*ranks, "combined"])}
    evaluations, gen = len(members), 0
    _report(on_generation, 0, fit, evaluations)
    stopped = False
    for gen in range(1, s.generations):
        if not budget_left():
            stopped = True
            break
        children = _breed(members, fit, q, credit_sum[pool] / (credit_count[pool] + 1.0), n, rng, s)
        child_fit = _score(children, pool, evaluate, credit_sum, credit_count)
        evaluations += len(children)
        members = np.concatenate([members, children])
        fit = np.concatenate([fit, child_fit])
        order = np.argsort(fit, kind="stable")[: s.population]
        members, fit = members[order], fit[order]
        _report(on_generation, gen, fit, evaluations)
    best = int(np.argmin(fit))
    return SearchResult(np.sort(pool[members[best]]), float(fit[best]), evaluations, gen + 1, prior_fitness, stopped)


def _score(members: np.ndarray, pool: np.ndarray, evaluate, credit_sum: np.ndarray, credit_count: np.ndarray) -> np.ndarray:
    fit = np.asarray(evaluate(members), dtype=np.float64)
    if len(fit) > 1 and fit.std() > 0:
        z = (fit - fit.mean()) / fit.std()
        credit_sum[pool] += members.T.astype(np.float64) @ z  # pool indices are unique
        credit_count[pool] += members.sum(axis=0)
    return fit


def _breed(members: np.ndarray, fit: np.ndarray, q: np.ndarray, credit: np.ndarray, n: int,
           rng: np.random.Generator, s: SearchSettings) -> np.ndarray:
    """Tournament selection, crossover and directed mutation, all rows at once."""
    p = len(members)
    pick = rng.integers(0, len(members), size=(p, 2, 2))
    winners = np.where(fit[pick[..., 0]] <= fit[pick[..., 1]], pick[..., 0], pick[..., 1])  # [p, 2]
    a, b = members[winners[:, 0]], members[winners[:, 1]]
    safety = -(q + s.credit_weight * credit)[None]  # higher = safer to zero
    temp = rng.uniform(*s.temperatures, size=(p, 1))
    keys = safety / temp + rng.gumbel(size=a.shape)
    keys = np.where(a & b, np.inf, np.where(a ^ b, keys, -np.inf))
    child = _topk_rows(keys, n)
    swaps = np.minimum(rng.binomial(n, s.mutation, size=p), min(n, child.shape[1] - n))
    if swaps.max() > 0:
        top = int(swaps.max())
        drop_key = np.where(child, -safety / temp + rng.gumbel(size=child.shape), -np.inf)  # least safe first
        add_key = np.where(child, -np.inf, safety / temp + rng.gumbel(size=child.shape))
        order_drop = _top_order(drop_key, top)
        order_add = _top_order(add_key, top)
        cols = np.arange(top)[None]
        take = cols < swaps[:, None]
        rows = np.broadcast_to(np.arange(p)[:, None], take.shape)
        child[rows[take], order_drop[take]] = False
        child[rows[take], order_add[take]] = True
    return child


def _top_order(keys: np.ndarray, k: int) -> np.ndarray:
    """Column indices of each row's k largest keys, largest first."""
    part = np.argpartition(-keys, k - 1, axis=1)[:, :k] if k < keys.shape[1] else np.tile(np.arange(keys.shape[1]), (len(keys), 1))
    return np.take_along_axis(part, np.argsort(-np.take_along_axis(keys, part, axis=1), axis=1, kind="stable"), axis=1)


def _report(callback, gen: int, fit: np.ndarray, evaluations: int) -> None:
    if callback is not None:
        callback({"generation": gen, "best": float(fit.min()), "mean": float(fit.mean()), "evaluations": evaluations})

"""Sparsity targets: exact per-layer zero counts, keep-masks by score, and allocation of a global target."""
from __future__ import annotations

import numpy as np

from evonnx.errors import EvonnxError

MAX_LAYER_SPARSITY = 0.995


def zero_count(size: int, sparsity: float) -> int:
    """Entries a layer of `size` must zero to reach `sparsity` exactly (rounded to the nearest entry)."""
    return int(min(size, max(0, round(sparsity * size))))


def keep_mask(scores: np.ndarray, n_zero: int, allowed: np.ndarray | None = None) -> np.ndarray:
    """Keep-mask zeroing exactly `n_zero` entries with the lowest score (ties broken by index).

    `allowed` (bool, same shape) restricts which entries may be zeroed: those outside it are kept.
    """
    flat = np.asarray(scores)
    flat = (flat if np.issubdtype(flat.dtype, np.floating) else flat.astype(np.float64)).ravel()
    order_key = flat if allowed is None else np.where(allowed.ravel(), flat, np.inf)
    return ~lowest(order_key, n_zero).reshape(np.shape(scores))


def lowest(values: np.ndarray, n: int) -> np.ndarray:
    """True at the `n` lowest of `values`, ties broken by index: the first n of a stable argsort, in linear
    time and without an index array (a partition finds the n-th value; of the entries equal to it, the first
    ones are taken)."""
    out = np.zeros(values.size, bool)
    if n <= 0:
        return out
    if n >= values.size:
        return ~out
    kth = np.partition(values, n - 1)[n - 1]
    np.less(values, kth, out=out)
    out[np.flatnonzero(values == kth)[: n - int(np.count_nonzero(out))]] = True
    return out


def resolve(names: list[str], sizes: dict[str, int], sparsity: float | None,
            layer_sparsity: dict[str, float] | None) -> dict[str, float] | None:
    """Explicit per-layer targets (the dict, plus the uniform global value for unnamed layers), or None
    when only a global target is given and the caller must allocate it."""
    layer_sparsity = dict(layer_sparsity or {})
    unknown = set(layer_sparsity) - set(names)
    if unknown:
        raise EvonnxError(f"layer_sparsity names unknown or non-target weights: {sorted(unknown)[:3]}")
    for name, value in [*layer_sparsity.items(), ("sparsity", sparsity if sparsity is not None else 0.0)]:
        if not 0.0 <= value <= 1.0:
            raise EvonnxError(f"{name}: sparsity must be in [0, 1], got {value}")
    if not layer_sparsity and sparsity is None:
        raise EvonnxError("give a global `sparsity` or a `layer_sparsity` dict")
    if not layer_sparsity:
        return None
    return {n: layer_sparsity.get(n, sparsity or 0.0) for n in names}


def lamp(weights: dict[str, np.ndarray], sparsity: float) -> dict[str, float]:
    """Per-layer sparsities of a global target from LAMP scores (Lee et al., ICLR 2021), without data: a
    weight's square over the sum of the squares of the weights of its layer at least as large; the globally
    lowest scores are zeroed (ties to the earlier layer). Each layer keeps its largest weight (its score is 1).

    A layer's scores, in ascending order of magnitude, are ascending themselves, so the global cut is found
    by bisecting the score's bits against per-layer binary searches: the scores take 4 bytes per weight
    (float32, sums in float64) and no array spans all layers."""
    names = list(weights)
    if not names:
        return {}
    scores = [_lamp_scores(np.asarray(weights[name])) for name in names]
    n = zero_count(sum(s.size for s in scores), sparsity)

    def count(bits: int, side: str) -> np.ndarray:
        value = np.int32(bits).view(np.float32)  # non-negative floats order like their bits
        return np.array([np.searchsorted(s, value, side) for s in scores])

    lo, hi = 0, int(np.float32(np.inf).view(np.int32))  # smallest bits with count(<=) >= n
    while lo < hi:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if count(mid, "right").sum() >= n else (mid + 1, hi)
    below, upto = count(lo, "left"), count(lo, "right")
    ties = np.minimum(upto - below, np.maximum(0, n - below.sum() - np.r_[0, np.cumsum(upto - below)[:-1]]))
    zeros = below + ties if n else np.zeros(len(names), np.int64)
    return {name: float(zeros[i]) / weights[name].size for i, name in enumerate(names)}


def _lamp_scores(w: np.ndarray, chunk: int = 1 << 22) -> np.ndarray:
    """One layer's LAMP scores in ascending order (float32, in one array of the layer's size): the suffix
    sums of the sorted squares are accumulated in float64 a chunk at a time, from the largest down."""
    sq = np.square(w.ravel().astype(np.float64)).astype(np.float32) if w.dtype != np.float32 else np.square(w.ravel())
    sq.sort()
    carry = 0.0
    for stop in range(sq.size, 0, -chunk):
        part = sq[max(0, stop - chunk):stop]
        tail = np.cumsum(part[::-1], dtype=np.float64)[::-1] + carry
        carry = float(tail[0])
        np.divide(part, tail, out=part, where=tail > 0)
        part[tail <= 0] = 0.0
    return np.maximum.accumulate(sq, out=sq)  # ascending already, up to rounding


def allocate(levels: np.ndarray, curves: dict[str, np.ndarray], sizes: dict[str, int], sparsity: float,
             fixed: dict[str, float] | None = None) -> dict[str, float]:
    """Per-layer sparsities that reach the global `sparsity` (over all of `sizes`) with the least
    summed damage, `curves[name][i]` being the measured fitness of that layer alone at `levels[i]`.

    Damage is interpolated on a fine grid; a Lagrange multiplier is bisected so the summed zeros hit
    the target; rounding is then fixed so the total is exact.
    """
    fixed = dict(fixed or {})
    names = [n for n in sizes if n not in fixed]
    total = zero_count(sum(sizes.values()), sparsity) - sum(zero_count(sizes[n], s) for n, s in fixed.items())
    free = sum(sizes[n] for n in names)
    if not names or total <= 0:
        return {**{n: 0.0 for n in names}, **fixed}
    if total >= free * MAX_LAYER_SPARSITY:
        return {**{n: total / free for n in names}, **fixed}
    grid = np.linspace(0.0, MAX_LAYER_SPARSITY, 400)
    damage = {n: np.interp(grid, levels, np.maximum.accumulate(curves[n])) for n in names}

    def pick(lam: float) -> dict[str, int]:
        out = {}
        for n in names:  # a loop over layers, not entries
            cost = damage[n] - lam * grid * sizes[n]
            out[n] = int(np.argmin(cost))
        return out

    lo, hi = 0.0, 1.0
    while sum(grid[i] * sizes[n] for n, i in pick(hi).items()) < total and hi < 1e12:
        hi *= 4.0
    for _ in range(60):
        mid = (lo + hi) / 2
        reached = sum(grid[i] * sizes[n] for n, i in pick(mid).items())
        lo, hi = (mid, hi) if reached < total else (lo, mid)
    chosen = {n: grid[i] for n, i in pick(hi).items()}
    zeros = {n: zero_count(sizes[n], s) for n, s in chosen.items()}
    # spread the rounding/step residue over layers in proportion to their size, within bounds
    residue = total - sum(zeros.values())
    weights = np.array([sizes[n] for n in names], dtype=np.float64)
    share = np.floor(residue * weights / weights.sum()).astype(int)
    share[np.argmax(weights)] += residue - share.sum()
    for n, extra in zip(names, share):
        zeros[n] = int(np.clip(zeros[n] + extra, 0, sizes[n]))
    deficit = total - sum(zeros.values())
    for n in sorted(names, key=lambda k: -sizes[k]):  # clipping left a residue: give it to the largest
        step = int(np.clip(deficit, -zeros[n], sizes[n] - zeros[n]))
        zeros[n] += step
        deficit -= step
    return {**{n: zeros[n] / sizes[n] for n in names}, **fixed}

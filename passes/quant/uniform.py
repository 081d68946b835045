"""Uniform (affine) grids for the surviving weights, per tensor or per output channel.

A value is rebuilt as (code - zero_point) * scale with codes in [0, 2^bits - 1]. Zeros are carried by
the mask, so the grid need not contain 0: the symmetric grid is mid-rise (zero_point = (2^bits - 1)/2,
levels +-scale/2, +-3 scale/2, ...), which gives 1 bit a real sign quantizer and never maps a survivor
to 0; the asymmetric grid spans [lo, hi] of each group. The range is shrunk by the clipping factor that
minimises each group's squared error (a grid search over `ALPHAS`, vectorised over groups); in large
tensors the error is estimated from a weighted sample of each group (`search_sample`), the range on all.
A group holding one distinct value gets a grid with that value on it.
"""
from __future__ import annotations

import numpy as np

ALPHAS = np.linspace(0.25, 1.0, 31)
SAMPLE_VALUES = 1 << 18  # values the clipping search measures in a large tensor (at least PER_GROUP a group)
PER_GROUP = 256
TAIL = 64  # of them the farthest from the centre, all measured


def fit_uniform(values: np.ndarray, groups: np.ndarray, n_groups: int, bits: int,
                symmetric: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(codes, scale[n_groups], zero_point[n_groups]) for `values` whose group of each is `groups`."""
    if not 1 <= bits <= 8:
        raise ValueError(f"uniform quantization takes 1 to 8 bits, got {bits}")
    v = np.asarray(values, dtype=np.float64)
    top = float(2 ** bits - 1)
    lo = np.full(n_groups, np.inf)
    hi = np.full(n_groups, -np.inf)
    np.minimum.at(lo, groups, v)
    np.maximum.at(hi, groups, v)
    empty = ~np.isfinite(lo)
    lo[empty], hi[empty] = -1.0, 1.0
    if symmetric:
        radius = np.maximum(np.abs(lo), np.abs(hi))
        center = np.zeros(n_groups)
    else:
        radius, center = (hi - lo) / 2, (hi + lo) / 2
    flat = radius <= 0  # one distinct value: rebuilt exactly below
    radius = np.where(flat, 1.0, radius)
    best_err = np.full(n_groups, np.inf)
    best_alpha = np.ones(n_groups)
    sample = search_sample(np.abs(v - center[groups]), groups, n_groups)
    pick, weight = sample if sample is not None else (slice(None), 1.0)
    sv, sg = v[pick], groups[pick]
    for alpha in ALPHAS:
        scale, zero = _grid(alpha * radius, center, top, symmetric)
        err = np.bincount(sg, weight * (_rebuild(sv, sg, scale, zero, top) - sv) ** 2, minlength=n_groups)
        better = err < best_err
        best_err[better], best_alpha[better] = err[better], alpha
    scale, zero = _grid(best_alpha * radius, center, top, symmetric)
    scale = np.where(flat, np.abs(center), scale)  # only asymmetric groups can be flat (survivors are nonzero)
    zero = np.where(flat, -np.sign(center), zero)
    scale32, zero32 = scale.astype(np.float32), zero.astype(np.float32)
    codes = np.clip(np.rint(v / scale32[groups] + zero32[groups]), 0, top).astype(np.int64)
    return codes, scale32, zero32


def search_sample(dist: np.ndarray, groups: np.ndarray, n_groups: int) -> tuple[np.ndarray, np.ndarray] | None:
    """A weighted sample of each group's values for the clipping search, about max(PER_GROUP, SAMPLE_VALUES /
    n_groups) of each: its TAIL values farthest from the centre (`dist`; the ones clipping cuts) all, the
    rest evenly spaced by distance, each weighted by how many it stands for. None: measure all values (a
    tensor of at most 2 x SAMPLE_VALUES)."""
    if len(groups) <= 2 * SAMPLE_VALUES:
        return None
    order = np.lexsort((dist, groups))  # by group, then by distance from the group's centre
    counts = np.bincount(groups, minlength=n_groups)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    per_group = max(PER_GROUP, -(-SAMPLE_VALUES // n_groups))
    stride = np.maximum((counts - TAIL) // (per_group - TAIL), 1)
    g = groups[order]
    rank = np.arange(len(order)) - starts[g]
    tail = rank >= counts[g] - TAIL
    keep = tail | (rank % stride[g] == 0)
    return order[keep], np.where(tail, 1, stride[g])[keep]


def _grid(radius: np.ndarray, center: np.ndarray, top: float, symmetric: bool) -> tuple[np.ndarray, np.ndarray]:
    if symmetric:
        return 2 * radius / max(top, 1.0), np.full_like(radius, top / 2)
    scale = 2 * radius / max(top, 1.0)
    return scale, -(center - radius) / scale


def _rebuild(v, groups, scale, zero, top):
    codes = np.clip(np.rint(v / scale[groups] + zero[groups]), 0, top)
    return (codes - zero[groups]) * scale[groups]

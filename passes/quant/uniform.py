"""Uniform (affine) grids for the surviving weights, per tensor or per output channel.

A value is rebuilt as (code - zero_point) * scale with codes in [0, 2^bits - 1]. Zeros are carried by
the mask, so the grid need not contain 0: the symmetric grid is mid-rise (zero_point = (2^bits - 1)/2,
levels +-scale/2, +-3 scale/2, ...), which gives 1 bit a real sign quantizer and never maps a survivor
to 0; the asymmetric grid spans [lo, hi] of each group. The range is shrunk by the clipping factor that
minimises each group's squared error (a grid search over `ALPHAS`, vectorised over groups); in large
tensors the error is estimated from a weighted sample of each group (`search_sample`), the range on all.
A group holding one distinct value gets a grid with that value on it.

`fit_rate` sizes a grid for entropy coding instead: a fine mid-rise grid of 2^8 levels, its step the group's
RMS times 2^(RATE_OFFSET - rate), so the codes take about `rate` bits each once entropy-coded (for Gaussian
values; heavier tails take a little less), never clipped (the step widens where 255 steps do not reach the
group's largest value). At a coded rate, a uniform grid with entropy coding loses less than a clipped grid
of 2^rate levels (about 1.5 dB of SNR for Gaussian values), and no value's error exceeds half a step. Its
step keeps SCALE_BITS significant bits (0.4 % off at most): the container then codes the scales of a grid
per channel in about a byte each instead of four (formats/SPEC.md, coded parameters).
"""
from __future__ import annotations

import numpy as np

ALPHAS = np.linspace(0.25, 1.0, 31)
SAMPLE_VALUES = 1 << 18  # values the clipping search measures in a large tensor (at least PER_GROUP a group)
PER_GROUP = 128
TAIL = 64  # of them the farthest from the centre, all measured
RATE_BITS = 8  # code range of the entropy-sized grid
RATE_OFFSET = 0.5 * np.log2(2 * np.pi * np.e)  # differential entropy of a unit Gaussian, bits
CHUNK = 1 << 22  # entries coded at a time: the float temporaries of a large tensor stay small
SCALE_BITS = 8  # significant bits an entropy-sized grid's step keeps (bfloat16's precision)


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
    best_alpha = _best_alpha(v, groups, n_groups, center, radius, top)
    scale, zero = _grid(best_alpha * radius, center, top, symmetric)
    scale = np.where(flat, np.abs(center), scale)  # only asymmetric groups can be flat (survivors are nonzero)
    zero = np.where(flat, -np.sign(center), zero)
    scale32, zero32 = scale.astype(np.float32), zero.astype(np.float32)
    return grid_codes(v, groups, scale32, zero32, top), scale32, zero32


def fit_rate(values: np.ndarray, groups: np.ndarray, n_groups: int,
             rate: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(codes, scale[n_groups], zero_point[n_groups]) of the entropy-sized mid-rise grid (module docstring)."""
    v = np.asarray(values, dtype=np.float64)
    counts = np.maximum(np.bincount(groups, minlength=n_groups), 1)
    power = sum(np.bincount(groups[part], v[part] ** 2, minlength=n_groups) for part in chunks(v.size))
    rms = np.sqrt(power / counts)
    top = float(2 ** RATE_BITS - 1)
    far = np.zeros(n_groups)
    np.maximum.at(far, groups, np.abs(v))
    step = np.maximum(rms * 2.0 ** (RATE_OFFSET - rate), 2 * far / top)
    scale32 = significant(np.where(step > 0, step, 1.0))
    zero32 = np.full(n_groups, top / 2, np.float32)
    return grid_codes(v, groups, scale32, zero32, top), scale32, zero32


def significant(x: np.ndarray) -> np.ndarray:
    """Positive finite values as float32 rounded to SCALE_BITS significant bits (to nearest, ties away)."""
    drop = 24 - SCALE_BITS  # float32 carries 24
    bits = np.asarray(x, np.float32).view(np.uint32)
    return ((bits + np.uint32(1 << (drop - 1))) & np.uint32(~((1 << drop) - 1) & 0xFFFFFFFF)).view(np.float32)


def grid_codes(v: np.ndarray, groups: np.ndarray, scale: np.ndarray, zero: np.ndarray, top: float) -> np.ndarray:
    """uint8 codes clip(rint(v / scale[group] + zero[group]), 0, top), a chunk of entries at a time."""
    codes = np.empty(v.size, np.uint8)
    for part in chunks(v.size):
        g = groups[part]
        codes[part] = np.clip(np.rint(v[part] / scale[g] + zero[g]), 0, top)
    return codes


def chunks(n: int, size: int = CHUNK) -> list[slice]:
    """Slices of `size` entries covering n."""
    return [slice(start, start + size) for start in range(0, n, size)] or [slice(0, 0)]


def search_sample(dist: np.ndarray, groups: np.ndarray, n_groups: int) -> tuple[np.ndarray, np.ndarray] | None:
    """A weighted sample of each group's values for the clipping search, about max(PER_GROUP, SAMPLE_VALUES /
    n_groups) of each: its TAIL values farthest from the centre (`dist`; the ones clipping cuts) all, the
    rest evenly spaced by distance, each weighted by how many it stands for. None: measure all values (a
    tensor of at most 2 x SAMPLE_VALUES)."""
    if len(groups) <= 2 * SAMPLE_VALUES:
        return None
    far = np.zeros(n_groups)
    np.maximum.at(far, groups, dist)
    far = np.where(far > 0, far, 1.0)
    key = np.empty(len(groups))  # by group, then by distance
    for part in chunks(len(groups)):
        key[part] = groups[part] + 0.5 * dist[part] / far[groups[part]]
    order = np.argsort(key)
    del key
    counts = np.bincount(groups, minlength=n_groups)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    per_group = max(PER_GROUP, -(-SAMPLE_VALUES // n_groups))
    stride = np.maximum((counts - TAIL) // (per_group - TAIL), 1)
    picks, weights = [], []
    for part in chunks(len(order)):
        g = groups[order[part]]
        rank = np.arange(part.start, part.start + len(g)) - starts[g]
        tail = rank >= counts[g] - TAIL
        keep = tail | (rank % stride[g] == 0)
        picks.append(order[part][keep])
        weights.append(np.where(tail, 1, stride[g])[keep])
    return np.concatenate(picks), np.concatenate(weights)


def _grid(radius: np.ndarray, center: np.ndarray, top: float, symmetric: bool) -> tuple[np.ndarray, np.ndarray]:
    if symmetric:
        return 2 * radius / max(top, 1.0), np.full_like(radius, top / 2)
    scale = 2 * radius / max(top, 1.0)
    return scale, -(center - radius) / scale


def _best_alpha(v: np.ndarray, groups: np.ndarray, n_groups: int, center: np.ndarray, radius: np.ndarray,
                top: float) -> np.ndarray:
    """Each group's clipping factor of least squared error. Measured in units of the group's radius around its
    centre, where every group has the same grid [-alpha, alpha] (a group's error is its radius^2 times that
    unit error, so the best alpha is the same)."""
    dist = np.empty(len(v))
    for part in chunks(len(v)):
        dist[part] = np.abs(v[part] - center[groups[part]])
    sample = search_sample(dist, groups, n_groups)
    del dist
    pick, weight = sample if sample is not None else (slice(None), 1.0)
    sg = groups[pick]
    u = (v[pick] - center[sg]) / radius[sg]
    best_err = np.full(n_groups, np.inf)
    best_alpha = np.ones(n_groups)
    half = top / 2
    for alpha in ALPHAS:
        levels = np.clip(np.rint((u / alpha + 1) * half), 0, top)
        err = np.bincount(sg, weight * ((levels / half - 1) * alpha - u) ** 2, minlength=n_groups)
        better = err < best_err
        best_err[better], best_alpha[better] = err[better], alpha
    return best_alpha

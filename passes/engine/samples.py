"""Sample axes: where each input and each output of a model carries the calibration samples.

Most inputs carry samples on axis 0, but a recurrent state `[layers, batch, hidden]` carries them on
axis 1, and a sample rate, a flag or a shape carries none. An input's axis comes from the model's
symbolic dims (the symbol shared by the most inputs, e.g. `batch`), unless the user names it. Outputs and
intermediate values get theirs by measurement: one sample, then the same sample twice; the axis that
doubles is the sample axis, and a value whose shape does not change (a scalar, shape arithmetic, an empty
tensor) has none. Values without a sample axis are passed whole to every batch and never concatenated.
A value may hold several entries per sample on its axis: a transformer's [batch*tokens, features] after a
Reshape holds `tokens` (its rows per sample, `rows_per_sample`).
"""
from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence

import numpy as np

Axis = int | None


def take(arr: np.ndarray, axis: Axis, start: int, stop: int, per: int = 1) -> np.ndarray:
    """Samples [start, stop) of `arr` along its sample axis (the whole array when it has none), `per`
    entries of the axis each."""
    if axis is None:
        return arr
    index = [slice(None)] * arr.ndim
    index[axis] = slice(start * per, stop * per)
    return arr[tuple(index)]


def join(parts: Sequence[np.ndarray], axis: Axis) -> np.ndarray:
    """Batches' values joined along the sample axis; a value without one is the same in every batch."""
    if axis is None or len(parts) == 1:
        return parts[0]
    return np.concatenate(parts, axis=axis)


def count(arr: np.ndarray, axis: Axis) -> int | None:
    return None if axis is None else int(arr.shape[axis])


def measured_axes(one: Sequence[np.ndarray], two: Sequence[np.ndarray]) -> list[Axis]:
    """Sample axis of each value from its shape on one sample and on that sample twice."""
    axes: list[Axis] = []
    for a, b in zip(one, two):
        a, b = np.asarray(a), np.asarray(b)
        if a.shape == b.shape or a.ndim != b.ndim:
            axes.append(None)
            continue
        changed = [i for i, (x, y) in enumerate(zip(a.shape, b.shape)) if x != y]
        doubled = [i for i in changed if b.shape[i] == 2 * a.shape[i]]
        axes.append((doubled or changed)[0])
    return axes


def fixed_batch_axes(values: Sequence[np.ndarray], batch: int,
                     other: Sequence[np.ndarray] | None = None) -> list[Axis]:
    """For a model whose batch is fixed (no second measurement possible): the first axis of the batch's size
    (a time-major [T, batch, C] output has it on axis 1), else none. With `other`, the values on a second
    batch, a value without such an axis that differs between the batches holds its samples folded into its
    first axis that is a multiple of the batch ([batch*tokens, features] after a Reshape)."""
    axes = [next((i for i, d in enumerate(np.shape(v)) if d == batch), None) for v in values]
    if other is None:
        return axes
    return [_folded(v, w, batch) if a is None else a for a, v, w in zip(axes, values, other)]


def _folded(a: np.ndarray, b: np.ndarray, batch: int) -> Axis:
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape or np.array_equal(a, b):
        return None
    return next((i for i, d in enumerate(a.shape) if d and d % batch == 0), None)


def rows_per_sample(values: Sequence[np.ndarray], axes: Sequence[Axis], n: int) -> list[int]:
    """Entries per sample on each value's sample axis, the values holding `n` samples (1 unless samples are
    folded with another extent, such as tokens)."""
    return [1 if a is None else max(int(np.shape(v)[a]) // n, 1) for v, a in zip(values, axes)]


# dim names that measure an extent of one sample, never the batch (an image's width, a sequence's length)
EXTENT = re.compile(r"width|height|seq|len|time|frame|token|step|chan|pixel|^[hwtlc]$", re.IGNORECASE)


def symbolic_axes(shapes: dict[str, list[int | str | None]], overrides: dict[str, Axis] | None = None) -> dict[str, Axis]:
    """Each input's sample axis from its dims: a symbol shared by several inputs (`batch`; ties: the one
    nearer the front), else the input's first dynamic axis, names of extents (width, sequence, ...) aside,
    else axis 0 (a fixed batch). Scalars have none, nor fully fixed inputs beside dynamic ones (a fixed
    state or rate cannot grow with the batch). `overrides` win."""
    overrides = overrides or {}

    def batch_like(d) -> bool:
        return not (isinstance(d, int) and d > 0) and not (isinstance(d, str) and EXTENT.search(d))

    seen = Counter(d for dims in shapes.values() for d in set(dims) if isinstance(d, str) and d and batch_like(d))
    first_pos: dict[str, int] = {}
    for dims in shapes.values():
        for i, d in enumerate(dims):
            if d in seen:
                first_pos[d] = min(first_pos.get(d, i), i)
    shared = [d for d in seen if seen[d] > 1]
    symbol = min(shared, key=lambda d: (-seen[d], first_pos[d], d)) if shared else None
    any_dynamic = any(not (isinstance(d, int) and d > 0) for dims in shapes.values() for d in dims)
    axes: dict[str, Axis] = {}
    for name, dims in shapes.items():
        if name in overrides:
            axes[name] = overrides[name]
        elif not dims:
            axes[name] = None
        elif symbol in dims:
            axes[name] = dims.index(symbol)
        elif all(isinstance(d, int) and d > 0 for d in dims):
            axes[name] = None if any_dynamic else 0
        else:
            axes[name] = next((i for i, d in enumerate(dims) if batch_like(d)), 0)
    return axes

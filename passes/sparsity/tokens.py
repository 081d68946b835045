"""Padding tokens: which rows of a transformer's activations hold real tokens, from its attention-mask input.

The mask input is found by name (it contains "mask"; "attention" is preferred), a sample axis, at least two
dims, and its values: a binary mask (1 at tokens, 0 at pads, int or float) or an additive one (0 at tokens,
large negatives at pads, e.g. [batch, 1, 1, tokens]). Its last axis is the tokens. A value's rows are then
matched to (sample, token) pairs: an axis of the token count beside the sample axis ([batch, tokens, d],
[batch, heads, tokens, d]), or tokens innermost within a sample's rows when they are folded into the
sample axis ([batch*tokens, d]). Without a mask input, or a token axis, every row counts.
"""
from __future__ import annotations

import re

import numpy as np

from evonnx.passes.engine.samples import Axis

MASK_NAME = re.compile(r"mask", re.IGNORECASE)
ADDITIVE_PAD = -1.0  # an additive mask's entries at or below this are pads


def mask_input(inputs: dict[str, np.ndarray], axes: dict[str, Axis]) -> str | None:
    """The name of the attention-mask input among `inputs` (see the module docstring), or None."""
    found = [n for n, v in inputs.items() if MASK_NAME.search(n) and axes.get(n) is not None and v.ndim >= 2
             and _keep(v) is not None]
    return min(found, key=lambda n: ("attention" not in n.lower(), found.index(n))) if found else None


def _keep(mask: np.ndarray) -> np.ndarray | None:
    """Where a binary or additive mask lets a token through, elementwise (None: neither kind of mask)."""
    values = np.unique(mask)
    if np.isin(values, (0, 1)).all() and 1 in values:
        return mask != 0
    if np.issubdtype(mask.dtype, np.floating) and not values[values > ADDITIVE_PAD].any():
        return mask > ADDITIVE_PAD  # all zeros: an additive mask without pads
    return None


def token_keep(inputs: dict[str, np.ndarray], axes: dict[str, Axis]) -> np.ndarray | None:
    """[samples, tokens] bool: the real tokens by the mask input, or None without one. A token is real when
    any position of the mask's middle axes lets it through (a [batch, 1, query, key] mask: any query)."""
    name = mask_input(inputs, axes)
    if name is None:
        return None
    keep = np.moveaxis(_keep(inputs[name]), axes[name], 0)
    return keep.reshape(len(keep), -1, keep.shape[-1]).any(axis=1)


def row_keep(lead: tuple[int, ...], axis: Axis, per: int, keep: np.ndarray | None) -> np.ndarray | None:
    """Flat bool over the rows of a value whose shape is `lead` + (features,), holding len(keep) samples on
    `axis` (`per` entries each): True at real tokens. None when every row counts (no mask, no token axis)."""
    if keep is None or axis is None or axis >= len(lead):
        return None
    n, t = keep.shape
    if per > 1:  # samples folded with tokens: [n*per, d], tokens innermost
        return keep[:, np.arange(per) % t].ravel() if len(lead) == 1 and per % t == 0 else None
    token_axes = [i for i, d in enumerate(lead) if d == t and i != axis]
    if not token_axes:
        return None
    shape = [1] * len(lead)
    shape[axis], shape[token_axes[-1]] = n, t
    oriented = keep if axis < token_axes[-1] else keep.T
    return np.broadcast_to(oriented.reshape(shape), lead).ravel()

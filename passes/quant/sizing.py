"""Coded-size estimate of a QuantizedTensor: entropy of the codes and of the mask, plus side information.

codes: zero-order entropy under the rANS frequency table the container would send, plus that table
(`formats.ans.best_table`), or bit packing when shorter; raw codes are counted at their full width
(the container's zstd byte planes do better on floats). mask: n * H2(density) + 16 bits for the
density (dense tensors need none). side: the scales and zero points as the container codes them, the
float32 centroids, and a fixed per-tensor header. The container's context modelling (masks, ANS_SEG) can
only do better.
"""
from __future__ import annotations

import numpy as np

from evonnx.formats.ans import best_table, table_cost_bits
from evonnx.formats.record import coded_params
from evonnx.formats.tensor import QuantizedTensor

HEADER_BYTES = 12  # name length, dtype, shape, scheme, bits, counts, granularity, mask length (varints since 2.0)


def code_bits(codes: np.ndarray) -> float:
    """Bits of the codes under their best static rANS table (table included), or fixed-width packing
    when that is shorter, as the container's symbol streams choose."""
    if codes.size == 0:
        return 0.0
    counts = np.bincount(codes.astype(np.int64)).astype(np.float64)
    if np.count_nonzero(counts) == 1:
        return 16.0  # a constant stream
    precision, freqs = best_table(counts)
    packed = codes.size * int(counts.size - 1).bit_length()
    return min(table_cost_bits(counts, precision, freqs) + 16.0, packed + 16.0)


def mask_bits(mask: np.ndarray | None) -> float:
    """n * H2(p) for an i.i.d. keep-mask of density p (0 for dense or empty tensors), plus 16 bits."""
    if mask is None or mask.size == 0:
        return 0.0
    p = float(np.count_nonzero(mask)) / mask.size
    if p in (0.0, 1.0):
        return 16.0
    return mask.size * -(p * np.log2(p) + (1 - p) * np.log2(1 - p)) + 16.0


def side_bits(t: QuantizedTensor) -> float:
    if t.scheme == "uniform":
        coded = coded_params(t)
        return 32.0 * (t.scale.size + t.zero_point.size) if coded is None else 8.0 * len(coded)
    if t.scheme == "codebook":
        return 32.0 * t.centroids.size
    return 0.0


def coded_bytes(t: QuantizedTensor) -> dict[str, float]:
    """Estimated bytes of a record: {'codes', 'mask', 'side', 'total'}."""
    if t.scheme == "raw":
        codes = t.n_kept * t.bits
    else:
        codes = code_bits(t.codes)
    parts = {"codes": codes / 8, "mask": mask_bits(t.mask) / 8, "side": side_bits(t) / 8 + HEADER_BYTES + len(t.name)}
    parts["total"] = sum(parts.values())
    return parts

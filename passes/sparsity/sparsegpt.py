"""One-shot pruning with the error compensated (SparseGPT: Frantar and Alistarh, "SparseGPT: Massive Language
Models Can Be Accurately Pruned in One-Shot", ICML 2023).

A layer's weight W [out, K] is pruned one input column at a time; each pruned weight's error is spread over
the columns not yet visited, through the upper Cholesky factor U of H^-1 (H = X^T X on the layer's calibration
inputs; the sweep is GPTQ's, passes/quant/gptq.py), so the layer's output error ||X (W' - W)^T||^2 stays small
without a least-squares re-fit of the survivors. The mask is chosen a block of columns at a time, on the
block as the earlier blocks' updates left it: the entries with the lowest OBS saliency w^2 / U_jj^2 go, as many
as the layer's share of zeros in that block. Entries already zero stay zero. Cost O(out x K^2) a layer, against
the re-fit's O(out x K_kept^3).
"""
from __future__ import annotations

import numpy as np

from evonnx.passes.quant.gptq import BLOCK, inverse_factor, sweep
from evonnx.passes.sparsity.layers import Layer
from evonnx.passes.sparsity.targets import keep_mask

SECONDS_PER_MAC = 2.5e-10  # of out x K^2 + K^3 (the sweep and the inverse): a 25M-parameter transformer's 49 layers,
# 1.0e11 of them, took 25 s on a 2-core x86-64 CPU


def seconds(layers: list[Layer], max_k: int) -> float:
    """About what pruning `layers` (those with a matrix view and at most `max_k` inputs) takes."""
    shapes = [layer.mat_shape for layer in layers if layer.fast and layer.mat_shape[1] <= max_k]
    return SECONDS_PER_MAC * sum(out * k * k + k ** 3 for out, k in shapes)


def prune(w: np.ndarray, keep: np.ndarray, x: np.ndarray, n_zero: int) -> tuple[np.ndarray, np.ndarray]:
    """(W' [out, K] in w's dtype, its keep-mask) with `n_zero` entries of `w` zeroed (or the zeros of `keep`,
    if more), the survivors compensated for them on the layer inputs `x` [rows, K]."""
    u = inverse_factor(x.T.astype(np.float64) @ x.astype(np.float64), len(x))
    diag = u.diag().astype(np.float64)
    new_keep = keep.copy()
    sizes = np.diff(np.minimum(np.arange(0, w.shape[1] + BLOCK, BLOCK), w.shape[1])) * w.shape[0]
    quota = np.diff(np.rint(n_zero * np.concatenate([[0], np.cumsum(sizes)]) / max(w.size, 1))).astype(int)

    def block(part: np.ndarray, b0: int, b1: int) -> None:
        score = part ** 2 / diag[None, b0:b1] ** 2
        allowed = new_keep[:, b0:b1]
        score[~allowed] = -np.inf  # zeros stay zero, and count
        new_keep[:, b0:b1] = keep_mask(score, max(quota[b0 // BLOCK], int((~allowed).sum()))).reshape(part.shape)

    def column(col: np.ndarray, j: int) -> np.ndarray:
        return np.where(new_keep[:, j:j + 1], col, 0.0)

    out = sweep(np.array(w, np.float64, order="C"), u, column, block)
    return out.astype(w.dtype), new_keep

"""Error-compensating rounding onto a fixed grid (GPTQ: Frantar et al., "GPTQ: Accurate Post-Training
Quantization for Generative Pre-trained Transformers", ICLR 2023).

A layer's weight W [out, K] is rounded one input column at a time; each column's rounding error is spread
over the columns not yet rounded so that the layer's output error ||X (Q - W)^T||^2 on calibration inputs X
stays small, with H = X^T X (passes/quant/refit.py) through the upper Cholesky factor U of H^-1:
W[:, j>i] -= (w_i - q_i) / U_ii * U_i,j. Columns go in blocks of BLOCK; the error of a block reaches the later
columns in one matrix product. The grid (each row's scale and zero point) is fitted beforehand on W and
stays fixed; entries outside the keep-mask are rounded to 0 (their error is spread like any other), so
pruned weights stay pruned. Cost O(out x K^2) per layer, a vectorised row operation per column.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np

BLOCK = 128
DAMP = 0.01  # of the mean diagonal of H, added to it: H is often singular (dead inputs, few rows)
ROWS_DAMP = 0.4  # more of it per input column per row H was summed over (see inverse_factor)


class Factor:
    """An upper triangular U held as strips of BLOCK rows from the diagonal on (U[b0:b1, b0:], float32): all a sweep
    reads, and about half of U's K^2 entries (the bit allocation keeps one a layer, and one more a fold where it
    cross-fits, in its store: passes/quant/spill.py)."""

    def __init__(self, strips: list[np.ndarray]):
        self.strips = strips

    @classmethod
    def upper(cls, u: np.ndarray) -> "Factor":
        return cls([np.ascontiguousarray(u[b0:b0 + BLOCK, b0:], np.float32) for b0 in range(0, len(u), BLOCK)])

    def diag(self) -> np.ndarray:
        return np.concatenate([np.diag(strip) for strip in self.strips])


def inverse_factor(gram: np.ndarray, rows: int | None = None) -> Factor:
    """U, upper triangular with H^-1 = U^T U, of the damped H (module docstring; held as a float32 `Factor` for
    the whole bit allocation); inputs that never fire get a unit diagonal. In float64, as GPTQ's reference does it:
    H's Cholesky factor, H^-1 from it, and H^-1's Cholesky factor, each by LAPACK in place in one K x K array
    (numpy's inverse and factor held four K x K arrays: 575 MiB of peak growth at K = 4608, against 116). `rows`: how
    many rows H was summed over. Few rows for its K columns (1,560 token rows for a 1,536-wide input) make H a
    noisy estimate, and the sweep then fits the calibration rows at the expense of others: minilm-l3 at rate 3
    lost 1.40 pooled cosine points on the sentences fitted to and 2.11 on held-out ones. The damping grows by
    ROWS_DAMP x K / rows (1.48 and 1.94 there; tools/bench/RESULTS.md)."""
    from scipy.linalg import lapack  # imported here: loading SciPy's own BLAS costs a run that never rounds with GPTQ

    h = np.array(gram, np.float64, order="F")  # LAPACK works in place on column-major arrays
    dead = np.diag(h) <= 0
    h[dead, dead] = 1.0
    damp = DAMP + (ROWS_DAMP * len(h) / rows if rows else 0.0)
    h[np.diag_indices_from(h)] += damp * float(np.mean(np.diag(h)))
    h, info = lapack.dpotrf(h, overwrite_a=1)  # H = R^T R, R in the upper triangle, the lower one zeroed
    if not info:
        h, info = lapack.dpotri(h, overwrite_c=1)  # H^-1's upper triangle, from R
    if not info:
        h, info = lapack.dpotrf(h, overwrite_a=1)  # H^-1 = U^T U
    if info:
        raise np.linalg.LinAlgError(f"GPTQ's inverse factor of a {len(h)}-wide Gram failed (LAPACK info {info})")
    return Factor.upper(h)


def sweep(w: np.ndarray, u: Factor, column: Callable[[np.ndarray, int], np.ndarray],
          block: Callable[[np.ndarray, int, int], None] | None = None) -> np.ndarray:
    """The error-compensating sweep of GPTQ and SparseGPT over W [out, K] (float64 in row-major order: a column-major
    W makes every column's update stride across rows, 3.9x slower at K = 4608; changed in place, returned):
    column by column, `column(col [out, 1], j)` says what column j becomes, and its error (col - q) / U_jj goes
    to the columns after it in the block, then, a block at a time, to the later blocks. `block(w_block, b0, b1)`
    sees each block, already updated by the earlier ones, before its columns (SparseGPT chooses its mask there)."""
    for b0, strip in zip(range(0, w.shape[1], BLOCK), u.strips):
        n = strip.shape[0]  # U[b0:b0 + n, b0:]
        part, err = w[:, b0:b0 + n], np.zeros((w.shape[0], n))
        if block is not None:
            block(part, b0, b0 + n)
        for i in range(n):
            col = part[:, i:i + 1]
            q = column(col, b0 + i)
            e = (col - q) / strip[i, i]
            part[:, i:] -= e * strip[i, i:n]
            part[:, i:i + 1] = q
            err[:, i] = e[:, 0]
        w[:, b0 + n:] -= err @ strip[:, n:]
    return w


def act_order(gram: np.ndarray) -> np.ndarray:
    """GPTQ's act-order: the input columns by falling energy (diagonal of H), so the columns whose error costs
    most are rounded first, while the most columns are left to take it up."""
    return np.argsort(-np.diag(gram), kind="stable")


def compensated_codes(w: np.ndarray, keep: np.ndarray, u: Factor, scale: np.ndarray, zero: np.ndarray,
                      top: float, order: np.ndarray | None = None) -> np.ndarray:
    """uint8 codes [out, K] of `w` [out, K] on the grid (code - zero[r]) * scale[r] of each row r, rounded
    column by column with the error compensated through `u` (inverse_factor of the layer's H); entries where
    `keep` is False get code 0 and stand for 0. `order`: the columns' sweep order (`u` then factors H with
    its rows and columns in that order)."""
    if order is not None:
        back = np.argsort(order)
        return compensated_codes(w[:, order], keep[:, order], u, scale, zero, top)[:, back]
    s32, z32 = scale.astype(np.float32)[:, None], zero.astype(np.float32)[:, None]
    codes = np.zeros(w.shape, np.uint8)

    def column(col: np.ndarray, j: int) -> np.ndarray:
        code = np.clip(np.rint(col / s32 + z32), 0, top)
        kept = keep[:, j:j + 1]
        codes[:, j] = np.where(kept, code, 0)[:, 0]
        return np.where(kept, (code.astype(np.float32) - z32) * s32, 0.0)  # what the decoder rebuilds

    sweep(np.array(w, np.float64, order="C"), u, column)  # a copy, in rows (w[:, order] is column-major)
    return codes

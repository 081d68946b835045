"""Survivor re-fitting: masked ridge least squares per output row, from forward activations only.

For a layer Y = X @ W.T + b with keep-mask M, each output row r solves
    min_w ||X[:, S_r] w + b_r - T[:, r]||^2 + lam ||w||^2,   S_r = {k : M[r, k]}
from the Gram matrix H = [X 1]^T [X 1] (one pass over the data). Rows are solved together in padded,
batched systems (no per-row Python loop). A row keeps its old values when the solution does not lower
its reconstruction error, so re-fitting never increases the error it minimises.
"""
from __future__ import annotations

import numpy as np

BATCH_ELEMENTS = 24_000_000  # float64 elements of one padded batch of normal-equation systems


def gram(x: np.ndarray, t: np.ndarray, with_bias: bool) -> tuple[np.ndarray, np.ndarray, float]:
    """H = A^T A, G = A^T T (A = [X 1] when with_bias) and the ridge scale mean(diag H)."""
    a = np.concatenate([x, np.ones((len(x), 1), x.dtype)], axis=1) if with_bias else x
    a64 = a.astype(np.float64)
    h = a64.T @ a64
    g = a64.T @ t.astype(np.float64)
    return h, g, float(np.mean(np.diag(h)[: x.shape[1]])) or 1.0


def row_errors(h: np.ndarray, g: np.ndarray, tt: np.ndarray, coef: np.ndarray) -> np.ndarray:
    """||A c_r - T_r||^2 for every row r of coef [out, K(+1)], from the Gram matrices (tt = diag T^T T)."""
    return np.einsum("rk,kj,rj->r", coef, h, coef) - 2 * np.einsum("rk,kr->r", coef, g) + tt


def refit(w_mat: np.ndarray, mask: np.ndarray, x: np.ndarray, t: np.ndarray, bias: np.ndarray | None = None,
          ridge: float = 1e-3) -> tuple[np.ndarray, np.ndarray | None, dict]:
    """Re-fit the kept entries of `w_mat` [out, K] (and `bias` [out], if given) so X @ W.T + b matches T.

    `x` [rows, K] are the layer's (student) inputs, `t` [rows, out] the teacher's layer outputs.
    Returns the new weight (zeros where the mask is False), the new bias and error figures.
    """
    with_bias = bias is not None
    h, g, scale = gram(x, t, with_bias)
    tt = np.einsum("ij,ij->j", t.astype(np.float64), t.astype(np.float64))
    keep = mask.astype(bool)
    if with_bias:
        keep = np.concatenate([keep, np.ones((len(keep), 1), bool)], axis=1)
    old = np.where(mask, w_mat, 0).astype(np.float64)
    if with_bias:
        old = np.concatenate([old, bias.astype(np.float64)[:, None]], axis=1)
    new = _solve_masked(h, g, keep, ridge * scale, w_mat.shape[1])
    err_old, err_new = row_errors(h, g, tt, old), row_errors(h, g, tt, new)
    better = err_new < err_old
    coef = np.where(better[:, None], new, old)
    k = w_mat.shape[1]
    # a kept entry fitted to exactly 0 reads an input that is zero on all data: keep its old value, so the
    # layer's sparsity stays exactly the mask's and the reconstruction is unchanged
    coef[:, :k] = np.where(mask & (coef[:, :k] == 0), old[:, :k], coef[:, :k])
    out_w = np.where(mask, coef[:, :k], 0).astype(w_mat.dtype)
    out_b = coef[:, k].astype(bias.dtype) if with_bias else None
    stats = {"error_before": float(err_old.sum()), "error_after": float(np.minimum(err_old, err_new).sum()),
             "rows_refit": int(better.sum()), "target_energy": float(tt.sum())}
    return out_w, out_b, stats


def _solve_masked(h: np.ndarray, g: np.ndarray, keep: np.ndarray, lam: float, n_weight: int) -> np.ndarray:
    """Solve every row's masked ridge system exactly.

    A row with m kept entries solves its m x m system; a row with p < m removed entries instead corrects
    the unconstrained optimum c = A^-1 g by the equality-constrained (OBS) formula
    c* = c - A^-1[:, R] (A^-1[R, R])^-1 c[R], a p x p system. Rows are batched, padded to the largest size.
    """
    out, k = keep.shape
    a = h + np.diag(np.where(np.arange(k) < n_weight, lam, 0.0))
    kept_n, removed_n = keep.sum(axis=1), (~keep).sum(axis=1)
    use_complement = removed_n < kept_n
    coef = np.zeros((out, k))
    direct = np.flatnonzero(~use_complement)
    for rows in _batches(direct, np.maximum(kept_n[direct], 1), 1):
        pos, valid = _positions(keep[rows])
        sub = a[pos[:, :, None], pos[:, None, :]] * (valid[:, :, None] & valid[:, None, :])
        sub[:, np.arange(pos.shape[1]), np.arange(pos.shape[1])] += ~valid
        sol = np.linalg.solve(sub, np.where(valid, g[pos, rows[:, None]], 0.0)[..., None])[..., 0]
        block = np.zeros((len(rows), k))
        np.put_along_axis(block, pos, np.where(valid, sol, 0.0), axis=1)
        coef[rows] = block
    comp = np.flatnonzero(use_complement)
    if len(comp):
        a_inv = np.linalg.inv(a)
        free = (a_inv @ g[:, comp]).T  # unconstrained optima of those rows
        for part in _batches(np.arange(len(comp)), np.maximum(removed_n[comp], 1), k):
            rows = comp[part]
            pos, valid = _positions(~keep[rows])
            sub = a_inv[pos[:, :, None], pos[:, None, :]] * (valid[:, :, None] & valid[:, None, :])
            sub[:, np.arange(pos.shape[1]), np.arange(pos.shape[1])] += ~valid
            rhs = np.where(valid, np.take_along_axis(free[part], pos, axis=1), 0.0)
            z = np.linalg.solve(sub, rhs[..., None])[..., 0] * valid
            coef[rows] = free[part] - np.einsum("bp,bpk->bk", z, a_inv[pos])
    return np.where(keep, coef, 0.0)


def _positions(sel: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the selected indices first (padded with unselected ones) and which of them are real."""
    m = max(int(sel.sum(axis=1).max()), 1)
    pos = np.argsort(~sel, axis=1, kind="stable")[:, :m]
    return pos, np.take_along_axis(sel, pos, axis=1)


def _batches(rows: np.ndarray, sizes: np.ndarray, width: int):
    """Split rows (sorted by system size) into batches whose padded systems stay under the memory bound."""
    order = np.argsort(sizes, kind="stable")
    rows, sizes = rows[order], sizes[order].astype(np.int64)
    start = 0
    while start < len(rows):
        cost = np.arange(1, len(rows) - start + 1) * sizes[start:] * np.maximum(sizes[start:], width)
        stop = start + max(1, int(np.searchsorted(cost, BATCH_ELEMENTS, side="right")))
        yield rows[start:stop]
        start = stop

"""Survivor re-fitting: masked ridge least squares per output row, from forward activations only.

For a layer Y = X @ W.T + b with keep-mask M, each output row r solves
    min_w ||X[:, S_r] w + b_r - T[:, r]||^2 + lam ||w||^2,   S_r = {k : M[r, k]}
from the Gram matrix H = [X 1]^T [X 1] (one pass over the data). All rows are solved together by
preconditioned conjugate gradients (matrix products, no per-row Python loop). A layer read only by a Relu
is fitted ReLU-aware (see `refit`). A row keeps its old values when the solution does not lower its
error, so re-fitting never increases the error it minimises.
"""
from __future__ import annotations

import numpy as np

RELU_ITERS = 4  # majorise-minimise steps of the ReLU-aware re-fit
SOLVE_ENTRIES = 1 << 21  # rows x K solved at a time: the solver's six float64 [rows, K] arrays stay ~100 MB
MAX_ITER = 50  # conjugate-gradient iterations a solve takes at most: a 256 x 2304 conv of a CNN kept at 50 % on
# 1536 rows (a rank-deficient Gram) is within 0.5 % of its converged error after 25, converged after 50
SECONDS_PER_MAC = 3e-11  # of a solver iteration's out x K^2 (float64): 2.8e-11 measured on that conv, 2-core x86-64


def seconds(out: int, k: int, relu: bool) -> float:
    """At most what re-fitting an [out, K] layer takes (`relu`: the ReLU-aware re-fit's RELU_ITERS more solves)."""
    return SECONDS_PER_MAC * out * k * k * MAX_ITER * (1 + RELU_ITERS * relu)


def gram(x: np.ndarray, t: np.ndarray, with_bias: bool) -> tuple[np.ndarray, np.ndarray, float]:
    """H = A^T A, G = A^T T (A = [X 1] when with_bias) and the ridge scale mean(diag H)."""
    a = np.concatenate([x, np.ones((len(x), 1), x.dtype)], axis=1) if with_bias else x
    a64 = a.astype(np.float64)
    h = a64.T @ a64
    g = a64.T @ t.astype(np.float64)
    return h, g, float(np.mean(np.diag(h)[: x.shape[1]])) or 1.0


def hinge_errors(y: np.ndarray, t: np.ndarray, floor: np.ndarray, active: np.ndarray) -> np.ndarray:
    """Per output: sum of (y - t)^2 where the teacher is above the floor, (y - floor)_+^2 elsewhere."""
    d = np.where(active, y - t, np.maximum(y - floor, 0.0))
    return np.einsum("ij,ij->j", d, d)


def row_errors(h: np.ndarray, g: np.ndarray, tt: np.ndarray, coef: np.ndarray) -> np.ndarray:
    """||A c_r - T_r||^2 for every row r of coef [out, K(+1)], from the Gram matrices (tt = diag T^T T)."""
    return np.sum((coef @ h) * coef, axis=1) - 2 * np.sum(coef * g.T, axis=1) + tt


def refit(w_mat: np.ndarray, mask: np.ndarray, x: np.ndarray, t: np.ndarray, bias: np.ndarray | None = None,
          ridge: float = 1e-3, relu_floor: np.ndarray | None = None,
          relu_iters: int = RELU_ITERS) -> tuple[np.ndarray, np.ndarray | None, dict]:
    """Re-fit the kept entries of `w_mat` [out, K] (and `bias` [out], if given) so X @ W.T + b matches T.

    `x` [rows, K] are the layer's (student) inputs, `t` [rows, out] the teacher's layer outputs.
    With `relu_floor` [out] (the output is read through max(Y, floor)), the error is ReLU-aware: where
    the teacher is at or below the floor, only a student above it counts — squared hinge, minimised by
    majorise-minimise steps that each re-solve the least squares with targets min(Y, floor) there.
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
    new = _solve_masked(h, g, keep, ridge * scale, w_mat.shape[1], old)
    if relu_floor is None:
        err_old, err_new = row_errors(h, g, tt, old), row_errors(h, g, tt, new)
    else:
        a = np.concatenate([x, np.ones((len(x), 1), x.dtype)], axis=1) if with_bias else x
        a, t64, floor = a.astype(np.float64), t.astype(np.float64), relu_floor.astype(np.float64)[None]
        active = t64 > floor
        for _ in range(relu_iters):
            y = a @ new.T
            new = _solve_masked(h, a.T @ np.where(active, t64, np.minimum(y, floor)), keep, ridge * scale,
                                w_mat.shape[1], new)
        err_old, err_new = (hinge_errors(a @ c.T, t64, floor, active) for c in (old, new))
        tt = np.einsum("ij,ij->j", np.where(active, t64, 0), np.where(active, t64, 0))  # the part that counts
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


def _solve_masked(h: np.ndarray, g: np.ndarray, keep: np.ndarray, lam: float, n_weight: int, start: np.ndarray,
                  tol: float = 1e-4, max_iter: int = MAX_ITER) -> np.ndarray:
    """Every row's masked ridge system, by Jacobi-preconditioned conjugate gradients run on SOLVE_ENTRIES' worth
    of rows at once (the rows' systems are independent).

    Each iteration is one [rows, K] x [K, K] product; warm-started from `start` (the pruned weights), rows
    stop updating once their relative residual is below `tol`.
    """
    a = h + np.diag(np.where(np.arange(h.shape[0]) < n_weight, lam, 0.0))
    step = max(1, SOLVE_ENTRIES // max(keep.shape[1], 1))
    return np.concatenate([_cg(a, g[:, r:r + step], keep[r:r + step], start[r:r + step], tol, max_iter)
                           for r in range(0, len(keep), step)] or [np.zeros(keep.shape)])


def _cg(a: np.ndarray, g: np.ndarray, keep: np.ndarray, start: np.ndarray, tol: float, max_iter: int) -> np.ndarray:
    """`_solve_masked` on some rows: `g` [K, rows], `keep` and `start` [rows, K]."""
    m = keep.astype(np.float64)
    diag = np.maximum(np.diag(a), 1e-30)[None]
    x = start * m
    r = m * (g.T - x @ a)
    scale = np.maximum(np.linalg.norm(m * g.T, axis=1), 1e-30)
    z = r / diag
    p = z.copy()
    rz = np.sum(r * z, axis=1)
    for _ in range(max_iter):
        active = np.linalg.norm(r, axis=1) > tol * scale
        if not active.any():
            break
        ap = m * (p @ a)
        pap = np.sum(p * ap, axis=1)
        alpha = np.where(active & (pap > 0), rz / np.where(pap > 0, pap, 1.0), 0.0)
        x += alpha[:, None] * p
        r -= alpha[:, None] * ap
        z = r / diag
        rz_new = np.sum(r * z, axis=1)
        p = z + (rz_new / np.where(rz > 0, rz, 1.0))[:, None] * p
        rz = rz_new
    return x * m

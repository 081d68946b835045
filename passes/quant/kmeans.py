"""1-D k-means (Lloyd) with linear initialisation, as in Deep Compression (Han et al., 2016).

Exact and fast in one dimension: with the values sorted once, each Lloyd step is a searchsorted of the
k-1 decision boundaries and a difference of prefix sums, O(k log n) per iteration. Linear initialisation
keeps centroids on the rare large weights but leaves some empty in the tails; when Lloyd has converged,
empty centroids are re-seeded by splitting the clusters of largest squared error (a few rounds).
Values that take at most k distinct values already (weights stored after quantization) are coded exactly.
"""
from __future__ import annotations

import numpy as np


def kmeans_1d(values: np.ndarray, k: int, iters: int = 300, reseed_rounds: int = 8,
              tol: float = 1e-9) -> tuple[np.ndarray, np.ndarray]:
    """(codes, centroids): codes index the sorted, distinct, float32 centroids; unused ones are dropped."""
    x = np.asarray(values, dtype=np.float64).ravel()
    if x.size == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.float32)
    distinct = np.unique(x.astype(np.float32))
    if distinct.size <= k:  # already on a grid of at most k values (a model stored after quantization): exact
        return assign(x, distinct), distinct
    xs = np.sort(x)
    n = xs.size
    s1 = np.concatenate([[0.0], np.cumsum(xs)])
    s2 = np.concatenate([[0.0], np.cumsum(xs * xs)])
    centroids = np.linspace(xs[0], xs[-1], max(1, min(k, n)))
    span = max(xs[-1] - xs[0], 1e-30)
    rounds = 0
    for _ in range(iters):
        bounds = np.concatenate([[0], np.searchsorted(xs, (centroids[1:] + centroids[:-1]) / 2), [n]])
        counts = np.diff(bounds)
        sums = s1[bounds[1:]] - s1[bounds[:-1]]
        new = np.where(counts > 0, sums / np.maximum(counts, 1), centroids)  # an empty cluster waits in place
        converged = np.max(np.abs(new - centroids)) <= tol * span
        centroids = new
        if converged:
            empty = np.flatnonzero(counts == 0)
            if empty.size == 0 or rounds >= reseed_rounds:
                break
            rounds += 1
            sse = (s2[bounds[1:]] - s2[bounds[:-1]]) - sums * sums / np.maximum(counts, 1)
            worst = np.argsort(-sse)[:empty.size]
            spread = np.sqrt(np.maximum(sse[worst], 0) / np.maximum(counts[worst], 1))
            centroids[empty[:worst.size]] = centroids[worst] + spread / 2
            centroids.sort()
    c32 = centroids.astype(np.float32)
    used = np.unique(assign(x, c32))
    centroids = np.unique(c32[used])
    return assign(x, centroids), centroids


def assign(values: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Index of the nearest of the sorted `centroids` for each value (ties go to the lower one)."""
    c = centroids.astype(np.float64)
    return np.searchsorted((c[1:] + c[:-1]) / 2, np.asarray(values, dtype=np.float64), side="left").astype(np.int64)

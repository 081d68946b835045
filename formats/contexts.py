"""Row / column class contexts on the 2-D view (rows = shape[0], cols = the rest) of a tensor.

A context is the pair (class of the entry's row, class of its column); classes are side information
chosen by the encoder. Coding runs context-major, each context in C order. Grouping rows and
columns by class turns each context into a rectangular tile of the permuted view, so encoder and
decoder move whole tiles instead of sorting entries.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MAX_CLASSES = 16


def view_2d(shape: tuple[int, ...], size: int) -> tuple[int, int]:
    """(rows, cols): rows = shape[0] (1 for a 0-d tensor or when shape[0] == 0), cols = size // rows."""
    rows = shape[0] if len(shape) >= 1 and shape[0] > 0 else 1
    return rows, size // rows


def rank_classes(score: np.ndarray, k: int) -> np.ndarray:
    """k equal-size classes by ascending score (ties by index): class = rank * k // len."""
    rank = np.empty(score.size, np.int64)
    rank[np.argsort(score, kind="stable")] = np.arange(score.size)
    return rank * k // max(score.size, 1)


@dataclass
class ClassGrid:
    """Row classes `rc` (< kr) and column classes `cc` (< kc) of a rows x cols view."""

    rc: np.ndarray
    cc: np.ndarray
    kr: int
    kc: int

    def __post_init__(self):
        self.row_order = np.argsort(self.rc, kind="stable")
        self.col_order = np.argsort(self.cc, kind="stable")
        self.row_inverse = np.argsort(self.row_order, kind="stable")
        self.col_inverse = np.argsort(self.col_order, kind="stable")
        self.rb = np.concatenate(([0], np.cumsum(np.bincount(self.rc, minlength=self.kr))))
        self.cb = np.concatenate(([0], np.cumsum(np.bincount(self.cc, minlength=self.kc))))

    def permute(self, a: np.ndarray) -> np.ndarray:
        """The view with rows and columns grouped by class (stable)."""
        return np.take(np.take(a, self.row_order, axis=0), self.col_order, axis=1)

    def unpermute(self, ap: np.ndarray) -> np.ndarray:
        return np.take(np.take(ap, self.row_inverse, axis=0), self.col_inverse, axis=1)

    def tiles(self):
        """(context, row slice, column slice) of each context's tile in the permuted view, context-major."""
        for a in range(self.kr):
            for b in range(self.kc):
                yield a * self.kc + b, slice(self.rb[a], self.rb[a + 1]), slice(self.cb[b], self.cb[b + 1])


@dataclass
class KeptGrid:
    """Where the kept entries of a tensor sit in its 2-D view (mask None = all kept)."""

    rows: int
    cols: int
    mask: np.ndarray | None  # bool (rows, cols)

    def scatter(self, values: np.ndarray, dtype) -> np.ndarray:
        """A (rows, cols) array with `values` at the kept entries (C order) and 0 elsewhere."""
        if self.mask is None:
            return np.asarray(values, dtype).reshape(self.rows, self.cols)
        out = np.zeros((self.rows, self.cols), dtype)
        out[self.mask] = values
        return out


def tile_counts(mp: np.ndarray, grid: ClassGrid) -> np.ndarray:
    """Number of True entries of each context's tile of a permuted bool view."""
    counts = np.zeros(grid.kr * grid.kc, np.int64)
    for b in range(grid.kc):
        col_sum = mp[:, grid.cb[b]:grid.cb[b + 1]].sum(axis=1, dtype=np.int64)
        for a in range(grid.kr):
            counts[a * grid.kc + b] = int(col_sum[grid.rb[a]:grid.rb[a + 1]].sum())
    return counts

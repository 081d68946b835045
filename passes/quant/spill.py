"""Arrays held within a memory budget, the rest in files: the bit allocation's Grams and GPTQ factors.

A layer's Gram is K^2 float32 for K inputs: a 3x3 convolution of C channels has a Gram 9x its weights, and GPTQ's
inverse factor of it about half that again. A cross-fitted bit allocation holds one of each per fold as well as
for all samples: held in memory, they took cnn-5M at `--time-limit 300` to 1.76 GB, 28x its model and activations
(tools/bench/RESULTS.md). `Spill` keeps the most recently used values in memory up to its budget and writes the
others to `.npz` files of a temporary directory (never pickled), read back at their next use: the allocation
visits a layer's options one after another, so its working set is the layer it is on. Values read once, much
later, are parked straight in files (`park`, `pop`). The files go when the store is collected.
"""
from __future__ import annotations

import itertools
import tempfile
import weakref
from collections import OrderedDict
from collections.abc import Hashable
from pathlib import Path

import numpy as np

from evonnx.errors import EvonnxError

Value = tuple[np.ndarray, ...]


class Spill:
    """Tuples of arrays by key: the most recently used within `budget` bytes in memory (always the last one
    used), the others in files. Values are read-only once stored; storing a key again replaces it."""

    def __init__(self, budget: int):
        self.budget = budget
        self.hot: OrderedDict[Hashable, Value] = OrderedDict()  # least recently used first
        self.files: dict[Hashable, Path] = {}
        self.written = 0  # bytes written to files
        self._names = itertools.count()
        self._dir: tempfile.TemporaryDirectory | None = None

    def __contains__(self, key: Hashable) -> bool:
        return key in self.hot or key in self.files

    def __setitem__(self, key: Hashable, value: Value) -> None:
        for array in value:
            array.flags.writeable = False
        self._drop(key)
        self.hot[key] = value
        self._evict()

    def park(self, key: Hashable, value: Value) -> None:
        """Store `value` straight in its file, never in memory: one read back by `pop`, much later."""
        self._drop(key)
        self._write(key, value)

    def pop(self, key: Hashable) -> Value:
        """`key`'s value, forgotten (its file removed)."""
        value = self.hot[key] if key in self.hot else _load(self.files[key])
        self._drop(key)
        return value

    def reserve(self, nbytes: int) -> None:
        """Write values out until `nbytes` more fit within the budget: the caller is about to hold them."""
        self._evict(self.budget - nbytes)

    def __getitem__(self, key: Hashable) -> Value:
        if key in self.hot:
            self.hot.move_to_end(key)
            return self.hot[key]
        value = _load(self.files[key])
        self.hot[key] = value
        self._evict()
        return value

    def held(self) -> int:
        """Bytes of the values in memory."""
        return sum(a.nbytes for value in self.hot.values() for a in value)

    def _evict(self, limit: int | None = None) -> None:
        """Write the least recently used values out until those in memory fit `limit` (the budget)."""
        limit = self.budget if limit is None else limit
        held = self.held()
        while held > limit and len(self.hot) > 1:
            key, value = self.hot.popitem(last=False)
            held -= sum(a.nbytes for a in value)
            if key not in self.files:  # a value read back from its file is still there
                self._write(key, value)

    def _drop(self, key: Hashable) -> None:
        self.hot.pop(key, None)
        stale = self.files.pop(key, None)
        if stale is not None:
            stale.unlink()

    def _write(self, key: Hashable, value: Value) -> None:
        path = self._folder() / f"{next(self._names)}.npz"
        try:
            np.savez(path, *value)
        except OSError as exc:
            path.unlink(missing_ok=True)
            raise EvonnxError(f"cannot write the bit allocation's Grams to {path.parent} "
                              f"({exc.strerror or exc}): free space there, or set TMPDIR to a directory "
                              f"with more") from exc
        self.files[key] = path
        self.written += sum(a.nbytes for a in value)

    def _folder(self) -> Path:
        if self._dir is None:
            self._dir = tempfile.TemporaryDirectory(prefix="evonnx-spill-")
            weakref.finalize(self, self._dir.cleanup)
        return Path(self._dir.name)


def _load(path: Path) -> Value:
    with np.load(path, allow_pickle=False) as stored:
        value = tuple(stored[f"arr_{i}"] for i in range(len(stored.files)))
    for array in value:
        array.flags.writeable = False
    return value

"""ModelState: the normalized ONNX graph, its weight table, and the student's changes (masks, codes)."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx

from evonnx.errors import ModelError
from evonnx.passes.fold import fold_constants
from evonnx.runtime.model_io import load_model, weight_free
from evonnx.runtime.weights import WeightTable, normalize, read_weights, set_weights, weight_table


@dataclass
class ModelState:
    """What passes read and return.

    `model` is the teacher's graph with its float weights (the table's, of HELD_BYTES or more) held outside
    it: references to runtime/model_io.HELD_LOCATION, their values in `held`, one copy of the teacher's
    weights that every state shares. Sessions and modules of `model` take `held` (model_io.weight_free); the
    graph alone is what structure, shape inference and fingerprints read. `weights` holds the student's
    current value of every weight a pass changed, `masks` the keep-masks (True = nonzero allowed) of pruned
    weights, `quant` the quantized records (formats.tensor.QuantizedTensor) once a weight is quantized.
    `history` is a list of per-pass records (name, settings, metrics) for reports.
    """

    model: onnx.ModelProto
    table: WeightTable
    label: str = "model"
    weights: dict[str, np.ndarray] = field(default_factory=dict)
    masks: dict[str, np.ndarray] = field(default_factory=dict)
    quant: dict[str, Any] = field(default_factory=dict)
    history: list[dict] = field(default_factory=list)
    held: dict[str, np.ndarray] = field(default_factory=dict, repr=False)
    _small: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    def original(self, name: str) -> np.ndarray:
        """The teacher's value of a weight (read-only; a small one read once from the graph)."""
        if name in self.held:
            return self.held[name]
        if name not in self._small:
            self._small.update(read_weights(self.model, [name]))
        return self._small[name]

    def current(self, name: str) -> np.ndarray:
        return self.weights[name] if name in self.weights else self.original(name)

    @property
    def targets(self) -> list[str]:
        return [w.name for w in self.table.targets]

    def sparsity(self, name: str) -> float:
        w = self.current(name)
        return float(np.mean(w == 0)) if w.size else 0.0

    def global_sparsity(self) -> float:
        sizes = np.array([self.table[n].size for n in self.targets], dtype=np.float64)
        zeros = np.array([np.count_nonzero(self.current(n) == 0) for n in self.targets], dtype=np.float64)
        return float(zeros.sum() / max(sizes.sum(), 1))

    def replace(self, weights: dict[str, np.ndarray] | None = None, masks: dict[str, np.ndarray] | None = None,
                quant: dict[str, Any] | None = None, record: dict | None = None) -> "ModelState":
        """A new state with some weights, masks or quantized records replaced (self is not changed)."""
        return ModelState(self.model, self.table, self.label, {**self.weights, **(weights or {})},
                          {**self.masks, **(masks or {})}, {**self.quant, **(quant or {})},
                          self.history + ([record] if record else []), self.held, self._small)

    def values(self) -> dict[str, np.ndarray]:
        """The student's value of every held weight (a torch module of `model` takes them)."""
        return {**self.held, **{n: w for n, w in self.weights.items() if n in self.held}}

    def to_onnx(self) -> onnx.ModelProto:
        """The student as a self-contained ONNX model: a copy of the graph with every weight in it (current
        values). For tools; passes hand `held` to their sessions instead."""
        return set_weights(self.model, {**self.held, **self.weights})


def load_state(source: str | os.PathLike | bytes, label: str | None = None, *, allow_empty: bool = False) -> ModelState:
    """Load, fold constants, normalize and describe a model, its float weights held outside the graph; refuse
    models with nothing float to compress unless `allow_empty`."""
    label = label or (str(source) if not isinstance(source, (bytes, bytearray)) else "<bytes>")
    model, origins = normalize(fold_constants(load_model(source, label=label)))
    table = weight_table(model, origins)
    if not table.weights and not allow_empty:
        reasons = "; ".join(f"{s.name}: {s.reason}" for s in table.skipped[:3])
        raise ModelError(f"{label}: the model has no float weights to compress" + (f" ({reasons})" if reasons else ""))
    graph, held = weight_free(model, names=table.weights, take=True)
    return ModelState(graph, table, label, held=held)

"""ModelState: the normalized ONNX graph, its weight table, and the student's changes (masks, codes)."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx

from evonnx.errors import ModelError
from evonnx.passes.fold import fold_constants
from evonnx.runtime.model_io import load_model
from evonnx.runtime.weights import WeightTable, normalize, read_weights, set_weights, weight_table


@dataclass
class ModelState:
    """What passes read and return.

    `model` keeps the teacher's weights; `weights` holds the student's current value of every weight a
    pass changed, `masks` the keep-masks (True = nonzero allowed) of pruned weights, `quant` the quantized
    records (formats.tensor.QuantizedTensor) once a weight is quantized. `history` is a list of per-pass
    records (name, settings, metrics) for reports.
    """

    model: onnx.ModelProto
    table: WeightTable
    label: str = "model"
    weights: dict[str, np.ndarray] = field(default_factory=dict)
    masks: dict[str, np.ndarray] = field(default_factory=dict)
    quant: dict[str, Any] = field(default_factory=dict)
    history: list[dict] = field(default_factory=list)
    _original: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    def original(self, name: str) -> np.ndarray:
        """The teacher's value of a weight (read once from the graph)."""
        if name not in self._original:
            self._original.update(read_weights(self.model, [name]))
        return self._original[name]

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
                          self.history + ([record] if record else []), self._original)

    def to_onnx(self) -> onnx.ModelProto:
        """The student as a runnable ONNX model (teacher weights replaced by the current ones)."""
        return set_weights(self.model, self.weights) if self.weights else self.model


def load_state(source: str | os.PathLike | bytes, label: str | None = None, *, allow_empty: bool = False) -> ModelState:
    """Load, fold constants, normalize and describe a model; refuse models with nothing float to compress
    unless `allow_empty`."""
    label = label or (str(source) if not isinstance(source, (bytes, bytearray)) else "<bytes>")
    model, origins = normalize(fold_constants(load_model(source, label=label)))
    table = weight_table(model, origins)
    if not table.weights and not allow_empty:
        reasons = "; ".join(f"{s.name}: {s.reason}" for s in table.skipped[:3])
        raise ModelError(f"{label}: the model has no float weights to compress" + (f" ({reasons})" if reasons else ""))
    return ModelState(model, table, label)

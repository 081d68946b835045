"""onnxruntime sessions built from a weight-free copy of the model, its large tensors handed over as values.

Serializing a model for ORT costs its size twice over (the bytes, then ORT's parse of them) and fails above
protobuf's 2 GiB. A session built here is given the graph without its large initializers (external-data
references, runtime/model_io.weight_free) and their values as external initializers, which ORT copies once
before optimizing: any model size, one copy of the weights, and other weights swapped in without a copy of
the model.
"""
from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import onnx
import onnxruntime as ort

from evonnx.runtime.model_io import unheld, weight_free


def inference_session(model: onnx.ModelProto, options: ort.SessionOptions | None = None,
                      providers: list[str] | None = None, weights: dict[str, np.ndarray] | None = None,
                      take: bool = False, held: Mapping[str, np.ndarray] | None = None) -> ort.InferenceSession:
    """An InferenceSession of `model` (CPU unless `providers` says otherwise), with the main-graph
    initializers named in `weights` holding those values instead (dtype kept, shape checked) and those held
    outside the graph taking theirs from `held`. `take`: the model is dropped after this (its large tensors
    are moved out, see model_io.weight_free)."""
    options = options or ort.SessionOptions()
    stub, held = weight_free(model, values=weights, take=take, held=held)
    unheld(stub, held)
    if held:
        options.add_external_initializers(list(held), [ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(a))
                                                       for a in held.values()])
    return ort.InferenceSession(stub.SerializeToString(), options, providers=providers or ["CPUExecutionProvider"])

"""onnxruntime sessions built from a weight-free copy of the model, its large tensors handed over as values.

Serializing a model for ORT costs its size twice over (the bytes, then ORT's parse of them) and fails above
protobuf's 2 GiB. A session built here is given the graph without its large initializers (external-data
references, runtime/model_io.weight_free) and their values as external initializers, which ORT copies once
before optimizing: any model size, one copy of the weights, and other weights swapped in without a copy of
the model.
"""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper

from evonnx.errors import ModelError
from evonnx.runtime.model_io import weight_free


def inference_session(model: onnx.ModelProto, options: ort.SessionOptions | None = None,
                      providers: list[str] | None = None,
                      weights: dict[str, np.ndarray] | None = None) -> ort.InferenceSession:
    """An InferenceSession of `model` (CPU unless `providers` says otherwise), with the main-graph
    initializers named in `weights` holding those values instead (dtype kept, shape checked)."""
    options = options or ort.SessionOptions()
    stub, held = weight_free(model)
    inline = {t.name: t for t in stub.graph.initializer}
    for name, value in (weights or {}).items():
        tensor = inline.get(name)
        if tensor is None:
            raise ModelError(f"weight {name!r} is not a main-graph initializer of the model")
        dtype = held[name].dtype if name in held else onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type)
        value = np.asarray(value)
        if value.shape != tuple(tensor.dims):
            raise ModelError(f"weight {name!r}: new shape {value.shape} != {tuple(tensor.dims)}")
        if name in held:
            held[name] = value.astype(dtype, copy=False)
        else:
            tensor.CopyFrom(numpy_helper.from_array(value.astype(dtype, copy=False), name))
    if held:
        options.add_external_initializers(list(held), [ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(a))
                                                       for a in held.values()])
    return ort.InferenceSession(stub.SerializeToString(), options, providers=providers or ["CPUExecutionProvider"])

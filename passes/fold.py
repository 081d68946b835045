"""Fold constant subgraphs before anything looks for weights (onnx-graphsurgeon).

Exporters leave computations on weights in the graph: a transposed or reshaped kernel, a position
embedding resized to the input grid, a scale divided by a constant. Folded, such a chain becomes the one
constant the model really uses, which can then be compressed like any weight, and nothing downstream
sees weights pass through shape-sensitive operators. Dequantization (int8 tensors behind `Cast` or
`DequantizeLinear`) is not folded: those weights stay quantized. Nor is anything that would make a
tensor larger than the model's largest initializer (an `Expand` or `Tile` of a constant).
"""
from __future__ import annotations

import numpy as np
import onnx

from evonnx.runtime.weights import QUANT_OPS

QUANTIZED_DTYPES = {np.dtype(t) for t in ("int8", "uint8", "int16", "uint16")}
MIN_THRESHOLD = 1 << 20
MAX_IR = 10  # the folded parts run in ONNX Runtime, which reads IR versions up to 10 at least


def fold_constants(model: onnx.ModelProto) -> onnx.ModelProto:
    """`model` with its constant subgraphs folded, or `model` itself when nothing folds."""
    import onnx_graphsurgeon as gs
    import onnxruntime as ort

    largest = max((_nbytes(t) for t in model.graph.initializer), default=0)
    try:
        gs.logger.G_LOGGER.severity = gs.logger.G_LOGGER.ERROR  # a part it cannot fold is no news
        ort.set_default_logger_severity(3)  # nor are the optimizer warnings of the sessions it folds with
        graph = gs.import_onnx(model)
        for g in [graph, *graph.subgraphs(recursive=True)]:  # what it runs to fold must open in ONNX Runtime
            g.ir_version = min(model.ir_version, MAX_IR)
        before = _computing(graph)
        graph.fold_constants(size_threshold=max(largest, MIN_THRESHOLD), should_exclude_node=_is_dequantization,
                             error_ok=True).cleanup().toposort()
    except Exception:  # noqa: BLE001 - a graph graphsurgeon cannot fold is used as it is
        return model
    if _computing(graph) >= before:
        return model
    folded = gs.export_onnx(graph, do_type_check=False)
    folded.ir_version = model.ir_version
    del folded.opset_import[:]
    folded.opset_import.extend(model.opset_import)
    folded.producer_name, folded.producer_version = model.producer_name, model.producer_version
    del folded.metadata_props[:]
    folded.metadata_props.extend(model.metadata_props)
    return folded


def _computing(graph) -> int:
    """Nodes that compute something (folding turns Constant nodes into initializers without folding anything)."""
    return sum(node.op != "Constant" for node in graph.nodes)


def _is_dequantization(node) -> bool:
    if node.op in QUANT_OPS:
        return True
    return node.op == "Cast" and any(getattr(t, "dtype", None) in QUANTIZED_DTYPES for t in node.inputs)


def _nbytes(tensor: onnx.TensorProto) -> int:
    try:
        itemsize = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type)).itemsize
    except (KeyError, TypeError, ValueError):  # strings and undefined types
        itemsize = 1
    return int(np.prod(tensor.dims, dtype=np.int64)) * itemsize

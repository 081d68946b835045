"""Rebuild a runnable ONNX model from a .evx file.

Output forms:

* ``fp32`` (default): every recorded weight as a dense initializer in its original dtype (float32
  for float32 models), bit-identical to `evonnx.formats.dequantize`, i.e. to the search's weights.
* ``fp16``: float32/float64 weights stored as float16 initializers, each followed by a Cast back
  to its dtype (half the memory; values rounded to nearest float16; weights beyond the float16
  range stay dense).
* ``qdq``: uniform weights stored as their integer codes with a DequantizeLinear (per tensor, per
  channel, or blocked), UINT4 when codes fit 4 bits and the model's opset is >= 21 (IR >= 10), else
  UINT8. Values are identical to the fp32 form (same float32 arithmetic). Half-integer zero points
  (mid-rise grids) use doubled codes. Raw and codebook weights, and uniform ones the opset or zero
  points cannot express, stay dense.
* ``qdq-trt``: the same in the form TensorRT takes: INT8 codes with zero points of 0 (mid-rise grids as
  doubled odd codes), per tensor or per channel; blocked weights and codes beyond ±127 stay dense.

Imports only numpy and onnx (the onnxruntime session helper is evonnx.tools.session).
"""
from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

from evonnx.errors import EvonnxError
from evonnx.formats import Container, QuantizedTensor, dequantize, read_evx
from evonnx.formats.dtypes import ELEM_TYPES
from evonnx.runtime.model_io import add_reference, default_opset, save_model
from evonnx.runtime.weights import all_names, fresh

FORMATS = ("fp32", "fp16", "qdq", "qdq-trt")
FP16_MAX = 65504.0


def decode(path_or_bytes, format: str = "fp32", *,  # noqa: A002 - the public name the CLI mirrors
           max_output_bytes: int | None = None) -> onnx.ModelProto:
    """Decode a .evx file (path or bytes) into an ONNX model in the given output form.

    `max_output_bytes` bounds the dense size of the weights (see evonnx.formats.read_evx)."""
    if format not in FORMATS:
        raise EvonnxError(f"unknown output format {format!r} (choose from {', '.join(FORMATS)})")
    return build_model(read_evx(path_or_bytes, max_output_bytes=max_output_bytes), format)


def decode_to_file(path_or_bytes, output, format: str = "fp32", *,  # noqa: A002
                   max_output_bytes: int | None = None) -> Path:
    """`decode` written to the ONNX file `output` (with external data above 2 GiB), each dense weight
    dequantized as it is written and its record let go: the decoder holds the container's codes and one
    dense weight at a time, never the whole model."""
    if format not in FORMATS:
        raise EvonnxError(f"unknown output format {format!r} (choose from {', '.join(FORMATS)})")
    records: dict[str, QuantizedTensor] = {}
    container = read_evx(path_or_bytes, max_output_bytes=max_output_bytes)
    model = build_model(container, format, records)
    container.tensors = []  # each record is the model's now, or `records`' until written
    del container
    return save_model(model, output, held=Dense(records))


class Dense(Mapping):
    """The dense value of each record, made when it is read; a record is let go once read (model_io.save_model
    reads each value once)."""

    def __init__(self, records: dict[str, QuantizedTensor]):
        self._records = records

    def __getitem__(self, name: str) -> np.ndarray:
        return dequantize(self._records.pop(name))

    def __contains__(self, name: object) -> bool:
        return name in self._records

    def __iter__(self) -> Iterator[str]:
        return iter(self._records)

    def __len__(self) -> int:
        return len(self._records)


def build_model(c: Container, format: str = "fp32",  # noqa: A002
                dense: dict[str, QuantizedTensor] | None = None) -> onnx.ModelProto:
    """Put the container's weights back into its graph (the container's graph is reused). `dense`: the weights
    that stay dense are not dequantized here but left as references (model_io.HELD_LOCATION), their records
    collected in `dense` (see decode_to_file)."""
    model = c.graph
    g = model.graph
    opset = default_opset(model)
    names = all_names(model)
    inputs = {i.name: k for k, i in enumerate(g.input)}
    new_nodes: list[onnx.NodeProto] = []
    drop_inputs: set[str] = set()
    for t in c.tensors:
        if format != "fp32" and t.size and (t.name not in inputs or model.ir_version >= 4):
            nodes = (_fp16(g, t, names) if format == "fp16" else
                     _qdq(g, t, names, opset, model.ir_version, signed=format == "qdq-trt"))
            if nodes is not None:
                new_nodes += nodes
                drop_inputs.add(t.name)
                continue
        if dense is None:
            _add_initializer(g, t.name, dequantize(t))
        else:
            add_reference(g, t.name, ELEM_TYPES[t.dtype], t.shape)
            dense[t.name] = t
    if drop_inputs & inputs.keys():
        keep = [i for i in g.input if i.name not in drop_inputs]
        del g.input[:]
        g.input.extend(keep)
    if new_nodes:
        old = list(g.node)
        del g.node[:]
        g.node.extend(new_nodes + old)
    return model


# -- helpers --------------------------------------------------------------------------------------
def _add_initializer(g: onnx.GraphProto, name: str, arr: np.ndarray, elem_type: int | None = None) -> None:
    """Append an initializer without an intermediate TensorProto copy (little-endian raw_data)."""
    init = g.initializer.add()
    init.name = name
    init.data_type = elem_type if elem_type is not None else ELEM_TYPES[arr.dtype.name]
    init.dims.extend(arr.shape)
    if arr.dtype.byteorder == ">":
        arr = arr.astype(arr.dtype.newbyteorder("<"))
    init.raw_data = arr.tobytes()


def _fp16(g: onnx.GraphProto, t: QuantizedTensor, names: set[str]) -> list[onnx.NodeProto] | None:
    if t.dtype not in ("float32", "float64"):
        return None
    w = dequantize(t)
    if not np.all(np.abs(w) <= FP16_MAX):
        return None
    stored = fresh(f"{t.name}__evx_fp16", names)
    _add_initializer(g, stored, w.astype(np.float16))
    return [helper.make_node("Cast", [stored], [t.name], name=fresh(f"{t.name}__evx_cast", names),
                             to=ELEM_TYPES[t.dtype])]


def _qdq_codes(t: QuantizedTensor) -> tuple[int, np.ndarray] | None:
    """(multiplier, integer zero points) when DequantizeLinear can reproduce the values exactly."""
    zp, scale = t.zero_point.astype(np.float64), t.scale
    if np.any(scale <= 0):
        return None  # pruned entries must come out as +0.0
    for mult in (1, 2):
        z = zp * mult
        if np.all(z == np.round(z)):
            if mult == 2:
                half = scale / np.float32(2)
                if np.any(half * np.float32(2) != scale) or np.any(half < np.finfo(np.float32).tiny):
                    return None
            return mult, z.astype(np.int64)
    return None


def _qdq(g: onnx.GraphProto, t: QuantizedTensor, names: set[str], opset: int, ir_version: int,
         signed: bool = False) -> list[onnx.NodeProto] | None:
    """DequantizeLinear nodes that reproduce `t` exactly: unsigned codes with their zero points, or
    (`signed`, TensorRT's form) INT8 codes centred on a zero point of 0, per tensor or per channel only."""
    if t.scheme != "uniform":
        return None
    need = 10 if t.axis is None else 13 if t.block_size == 0 else 21
    if opset < need or (signed and t.block_size):
        return None
    found = _qdq_codes(t)
    if found is None:
        return None
    mult, zp = found
    top = ((1 << t.bits) - 1) * mult  # the grid's range decides the storage type, not the codes in use
    x = _dense_codes(t, zp, mult)
    if signed:
        if zp.max() > 127 or top - zp.min() > 127:
            return None
        x = x - (zp.reshape(_group_shape(t)) if t.axis is not None else zp.reshape(()))
        zp, elem = np.zeros_like(zp), TensorProto.INT8
    else:
        if zp.min() < 0 or zp.max() > 255 or top > 255:
            return None
        four = top <= 15 and zp.max() <= 15 and opset >= 21 and ir_version >= 10
        elem = TensorProto.UINT4 if four else TensorProto.UINT8
    base = t.name
    x_name = fresh(f"{base}__evx_q", names)
    s_name = fresh(f"{base}__evx_scale", names)
    z_name = fresh(f"{base}__evx_zp", names)
    _add_quant_initializer(g, x_name, x, elem)
    _add_initializer(g, s_name, (t.scale / np.float32(mult)).astype(np.float32) if mult == 2 else t.scale)
    _add_quant_initializer(g, z_name, zp.reshape(t.scale.shape), elem)
    attrs = {} if t.axis is None else {"axis": t.axis}
    if t.block_size:
        attrs["block_size"] = t.block_size
    out = t.name if t.dtype == "float32" else fresh(f"{base}__evx_f32", names)
    nodes = [helper.make_node("DequantizeLinear", [x_name, s_name, z_name], [out],
                              name=fresh(f"{base}__evx_dq", names), **attrs)]
    if out != t.name:
        nodes.append(helper.make_node("Cast", [out], [t.name], name=fresh(f"{base}__evx_cast", names),
                                      to=ELEM_TYPES[t.dtype]))
    return nodes


def _group_shape(t: QuantizedTensor) -> list[int]:
    """The shape that broadcasts one value per channel along the tensor's axis."""
    shape = [1] * len(t.shape)
    shape[t.axis] = t.shape[t.axis]
    return shape


def _dense_codes(t: QuantizedTensor, zp: np.ndarray, mult: int) -> np.ndarray:
    """int64 codes of every entry (times `mult`), pruned entries set to their group's zero point."""
    codes = t.codes.astype(np.int64) * mult
    if t.mask is None:
        return codes.reshape(t.shape)
    if t.axis is None:
        x = np.full(t.shape, zp.reshape(()), np.int64)
    elif t.block_size == 0:
        x = np.broadcast_to(zp.reshape(_group_shape(t)), t.shape).copy()
    else:
        x = np.repeat(zp, t.block_size, axis=t.axis)
        x = np.ascontiguousarray(np.take(x, np.arange(t.shape[t.axis]), axis=t.axis))
    x[t.mask] = codes
    return x


def _add_quant_initializer(g: onnx.GraphProto, name: str, x: np.ndarray, elem: int) -> None:
    if elem in (TensorProto.UINT8, TensorProto.INT8):
        dtype = np.uint8 if elem == TensorProto.UINT8 else np.int8
        _add_initializer(g, name, np.ascontiguousarray(x, dtype), elem)
        return
    flat = np.ascontiguousarray(x, np.uint8).reshape(-1)
    if flat.size % 2:
        flat = np.concatenate([flat, np.zeros(1, np.uint8)])
    init = g.initializer.add()
    init.name = name
    init.data_type = TensorProto.UINT4
    init.dims.extend(x.shape)
    init.raw_data = (flat[0::2] | (flat[1::2] << 4)).tobytes()

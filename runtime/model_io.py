"""Read and write ONNX models: external data, clear errors, atomic writes, a readable IR version."""
from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Collection, Iterator, Mapping
from pathlib import Path

import numpy as np
import onnx
from google.protobuf.message import DecodeError, EncodeError
from onnx import external_data_helper, numpy_helper

from evonnx.errors import ModelError
from evonnx.formats.atomic import atomic_write, atomic_write_bytes

# Protobuf refuses single messages above 2 GiB; bigger models must keep external data.
_PROTO_LIMIT = 2**31 - 1
_PAGE = 4096


def load_model(source: str | os.PathLike | bytes, *, label: str | None = None) -> onnx.ModelProto:
    """Parse an ONNX model from a path or bytes, pulling in external data; raise ModelError on bad input."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        label = label or "<bytes>"
        data, base_dir = bytes(source), None
    else:
        path = Path(source)
        label = label or str(path)
        if not path.is_file():
            raise ModelError(f"{label}: no such file")
        data, base_dir = path.read_bytes(), path.parent
    if not data:
        raise ModelError(f"{label}: empty file, not an ONNX model")
    try:
        model = onnx.ModelProto.FromString(data)
    except (DecodeError, RuntimeError, ValueError) as exc:
        raise ModelError(f"{label}: not an ONNX model or truncated ({exc.__class__.__name__}: {exc})") from None
    if not model.HasField("graph") or not model.graph.node:
        raise ModelError(f"{label}: not an ONNX model (no graph nodes)")
    if not model.opset_import:
        raise ModelError(f"{label}: model declares no opset")
    _load_external(model, base_dir, label)
    return model


def _load_external(model: onnx.ModelProto, base_dir: Path | None, label: str) -> None:
    tensors = [t for t in external_data_helper._get_all_tensors(model) if external_data_helper.uses_external_data(t)]
    if not tensors:
        return
    if base_dir is None:
        raise ModelError(f"{label}: tensor {tensors[0].name!r} uses external data; load the model from its path")
    for tensor in tensors:
        info = external_data_helper.ExternalDataInfo(tensor)
        location = (base_dir / info.location).resolve()
        if base_dir.resolve() not in location.parents:
            raise ModelError(f"{label}: tensor {tensor.name!r} points outside the model's folder ({info.location!r})")
        if not location.is_file():
            raise ModelError(f"{label}: external data file {info.location!r} for tensor {tensor.name!r} is missing")
        size = location.stat().st_size
        end = (info.offset or 0) + (info.length or 0)
        if end > size:
            raise ModelError(f"{label}: external data {info.location!r} is truncated for tensor {tensor.name!r}")
        try:
            external_data_helper.load_external_data_for_tensor(tensor, str(base_dir))
        except (OSError, ValueError) as exc:
            raise ModelError(f"{label}: cannot read external data for tensor {tensor.name!r}: {exc}") from None
        tensor.data_location = onnx.TensorProto.DEFAULT
        del tensor.external_data[:]


def min_ir_version(model: onnx.ModelProto) -> int:
    """The lowest IR version that supports the model's default-domain opset (widest runtime compatibility)."""
    opset = default_opset(model)
    for _release, ir, ai_onnx, *_ in onnx.helper.VERSION_TABLE:
        if ai_onnx >= opset:
            return max(ir, 7)
    return onnx.IR_VERSION


def default_opset(model: onnx.ModelProto) -> int:
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return entry.version
    return 1


def save_model(model: onnx.ModelProto, path: str | os.PathLike,
               held: Mapping[str, np.ndarray] | None = None) -> Path:
    """Write a model atomically (temp files + rename), one initializer at a time (no serialized copy of the
    model); above protobuf's 2 GiB, its large tensors go to an external data file beside it. `held`: the
    values of its initializers that are HELD_LOCATION references, each read once as it is written (a
    mapping may make them then: the model's weights need never be in memory together)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    unheld(model, held or {}, str(path))
    try:
        small = model.ByteSize() + sum(_held_bytes(t) for t in model.graph.initializer if is_held(t)) <= _PROTO_LIMIT
    except EncodeError:  # protobuf cannot even size a message over 2 GiB
        small = False
    if small:
        atomic_write(path, _serialized(model, held or {}))
        return path
    data_name = path.name + ".data"
    stub = without_initializers(model)
    with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
        with open(os.path.join(tmp, data_name), "wb") as fh:
            for tensor in model.graph.initializer:
                data = _held_data(tensor, held) if is_held(tensor) else (
                    tensor.raw_data if tensor.HasField("raw_data") else b"")
                if len(data) < HELD_BYTES and not is_held(tensor):
                    stub.graph.initializer.append(tensor)
                    continue
                fh.seek(-fh.tell() % _PAGE, os.SEEK_CUR)  # page-aligned, so that readers may map it
                _external_ref(stub.graph, tensor, data_name, fh.tell(), len(data))
                fh.write(data)
                del data
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(os.path.join(tmp, data_name), path.parent / data_name)
        atomic_write_bytes(path, stub.SerializeToString())
    return path


def _serialized(model: onnx.ModelProto, held: Mapping[str, np.ndarray]) -> Iterator[bytes | memoryview]:
    """`model`'s protobuf encoding, one initializer at a time: the model without its initializers, then its
    graph field again holding only them (a parser merges a message field that occurs twice, appending the
    repeated ones), so the bytes of the whole model never exist at once. A held tensor is its header (name,
    type, dims) and then its raw_data field written from the array's own memory."""
    yield without_initializers(model).SerializeToString()
    tensors = model.graph.initializer
    if not tensors:
        return
    heads = [_header(t) if is_held(t) else None for t in tensors]
    sizes = [t.ByteSize() if h is None else len(h) + _field_size(_held_bytes(t)) for t, h in zip(tensors, heads)]
    yield _GRAPH_TAG + _varint(sum(len(_INITIALIZER_TAG) + len(_varint(n)) + n for n in sizes))
    for tensor, head, size in zip(tensors, heads, sizes):
        if head is None:
            yield _INITIALIZER_TAG + _varint(size) + tensor.SerializeToString()
        else:
            data = _held_data(tensor, held)
            yield _INITIALIZER_TAG + _varint(size) + head + _RAW_TAG + _varint(len(data))
            yield data


def _header(tensor: onnx.TensorProto) -> bytes:
    return onnx.TensorProto(name=tensor.name, data_type=tensor.data_type, dims=tensor.dims).SerializeToString()


def _held_bytes(tensor: onnx.TensorProto) -> int:
    itemsize = onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize
    return math.prod(tensor.dims) * itemsize


def _held_data(tensor: onnx.TensorProto, held: Mapping[str, np.ndarray]) -> memoryview:
    """The raw bytes of a held tensor's value (little-endian, C order), a view of the array where it is one."""
    dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).newbyteorder("<")
    value = np.ascontiguousarray(held[tensor.name], dtype=dtype)
    if value.shape != tuple(tensor.dims):
        raise ModelError(f"weight {tensor.name!r}: value of shape {value.shape}, the graph says {tuple(tensor.dims)}")
    return memoryview(value.reshape(-1)).cast("B")


def _field_size(n: int) -> int:
    """Bytes of a length-delimited field of n bytes with a one-byte tag."""
    return 1 + len(_varint(n)) + n


_GRAPH_TAG = bytes([7 << 3 | 2])  # ModelProto.graph = 7, length-delimited
_INITIALIZER_TAG = bytes([5 << 3 | 2])  # GraphProto.initializer = 5
_RAW_TAG = bytes([9 << 3 | 2])  # TensorProto.raw_data = 9


def _varint(n: int) -> bytes:
    out = bytearray()
    while n >= 0x80:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


# a weight-free copy keeps tensors below this size inline: shape tensors, scalars (shape inference reads them)
HELD_BYTES = 1024
HELD_LOCATION = "evonnx-held"  # the external-data location of a held tensor: a name, never a file
_PLAIN_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE, onnx.TensorProto.INT8,
                onnx.TensorProto.UINT8, onnx.TensorProto.INT16, onnx.TensorProto.UINT16, onnx.TensorProto.INT32,
                onnx.TensorProto.UINT32, onnx.TensorProto.INT64, onnx.TensorProto.UINT64, onnx.TensorProto.BOOL}


def weight_free(model: onnx.ModelProto, min_bytes: int = HELD_BYTES, *, values: dict[str, np.ndarray] | None = None,
                take: bool = False, held: Mapping[str, np.ndarray] | None = None,
                names: Collection[str] | None = None) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """A copy of `model` whose main-graph initializers of `min_bytes` or more (plain numeric types, raw
    data; of `names` only, when given) are references of the same name, type and shape to external data at
    HELD_LOCATION, plus those tensors' values. The copy is small whatever the model's size: it is what shape
    inference and session building take (a session gets the held values as external initializers).

    `values`: other values for initializers of those names (dtype kept, shape checked; the model's own are
    not read). `held`: the values of the model's initializers that are HELD_LOCATION references already
    (looked up by name; a graph that holds its weights, such as passes.state.ModelState's; a reference
    without one stays a reference, which shape inference takes and a session does not). `take`: clear
    each held tensor's data in `model` once it is copied out, for a model about to be dropped, so that its
    weights exist once at a time."""
    values = dict(values or {})
    wanted = None if names is None else set(names)
    out = without_initializers(model)
    kept = {}
    for tensor in model.graph.initializer:
        plain = tensor.data_type in _PLAIN_TYPES
        dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type) if plain else None
        value = values.pop(tensor.name, None)
        if value is None and is_held(tensor):
            if held is None or tensor.name not in held:
                out.graph.initializer.append(tensor)  # a reference already, its value unknown here (see `unheld`)
                continue
            value = held[tensor.name]
        if value is not None:
            value = np.asarray(value)
            if value.shape != tuple(tensor.dims):
                raise ModelError(f"weight {tensor.name!r}: new shape {value.shape} != {tuple(tensor.dims)}")
            if not plain or value.nbytes < min_bytes:
                out.graph.initializer.append(numpy_helper.from_array(value.astype(dtype or value.dtype), tensor.name))
                continue
            kept[tensor.name] = value.astype(dtype, copy=False)
        elif (plain and tensor.HasField("raw_data") and len(tensor.raw_data) >= min_bytes
              and (wanted is None or tensor.name in wanted)):
            kept[tensor.name] = np.frombuffer(tensor.raw_data, dtype.newbyteorder("<")).reshape(tuple(tensor.dims))
            if take:
                tensor.ClearField("raw_data")
        else:
            out.graph.initializer.append(tensor)
            continue
        _external_ref(out.graph, tensor, HELD_LOCATION, 0, kept[tensor.name].nbytes)
    if values:
        raise ModelError(f"weights not found in the model: {sorted(values)[:5]}")
    return out, kept


def unheld(stub: onnx.ModelProto, values: Collection[str], label: str = "model") -> None:
    """Refuse a weight-free copy with a HELD_LOCATION reference whose value is not among `values`."""
    missing = [t.name for t in stub.graph.initializer if is_held(t) and t.name not in values]
    if missing:
        raise ModelError(f"{label}: weights {missing[:3]} are held outside the graph and no values were given")


def is_held(tensor: onnx.TensorProto) -> bool:
    """Whether `tensor` is a reference to a value held outside the graph (weight_free's HELD_LOCATION)."""
    return tensor.data_location == onnx.TensorProto.EXTERNAL and any(
        e.key == "location" and e.value == HELD_LOCATION for e in tensor.external_data)


def _external_ref(graph: onnx.GraphProto, tensor: onnx.TensorProto, location: str, offset: int, length: int) -> None:
    """Append to `graph` an initializer of `tensor`'s name, type and shape whose data is external."""
    add_reference(graph, tensor.name, tensor.data_type, tensor.dims, location, offset, length)


def add_reference(graph: onnx.GraphProto, name: str, data_type: int, dims, location: str = HELD_LOCATION,
                  offset: int = 0, length: int = 0) -> None:
    """Append to `graph` an initializer whose data is external (by default: held, see weight_free)."""
    ref = graph.initializer.add(name=name, data_type=data_type, dims=dims, data_location=onnx.TensorProto.EXTERNAL)
    for key, value in (("location", location), ("offset", str(offset)), ("length", str(length))):
        ref.external_data.add(key=key, value=value)


def without_initializers(model: onnx.ModelProto, names: set[str] | None = None) -> onnx.ModelProto:
    """A copy of `model` without its main-graph initializers named in `names` (None: without any), made
    without copying them."""
    out = onnx.ModelProto()
    _copy_fields(model, out, skip="graph")
    _copy_fields(model.graph, out.graph, skip="initializer")
    out.graph.initializer.extend(t for t in model.graph.initializer if names is not None and t.name not in names)
    return out


def _copy_fields(src, dst, skip: str) -> None:
    """Copy every set field of message `src` into `dst` but the one named `skip`."""
    for fd, value in src.ListFields():
        if fd.name == skip:
            continue
        if getattr(fd, "is_repeated", None) or getattr(fd, "label", None) == fd.LABEL_REPEATED:  # protobuf 7 / older
            getattr(dst, fd.name).extend(value)
        elif fd.type == fd.TYPE_MESSAGE:
            getattr(dst, fd.name).CopyFrom(value)
        else:
            setattr(dst, fd.name, value)

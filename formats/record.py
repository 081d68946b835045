"""One tensor record (the body of a TENS section): header, quantization parameters, mask and value streams.

Reading is two-phase: `read_header` parses and bounds-checks the fixed part (so the container can
refuse absurd sizes before allocating anything), `read_payload` decodes the streams. The layout is that
of the container's major version: 2 writes counts and lengths as varints and lets the value stream run
to the end of the record; 1 wrote them as fixed u16/u64 fields (read, and written for tests).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from evonnx.errors import EvxFormatError
from evonnx.formats import masks, symbols
from evonnx.formats.bytesio import Reader, Writer
from evonnx.formats.contexts import KeptGrid, view_2d
from evonnx.formats.dtypes import DTYPE_NAMES, ELEM_TYPES, INTEGER_DTYPES, itemsize, pattern_dtype
from evonnx.formats.tensor import MAX_NDIM, QuantizedTensor, scale_shape

SCHEME_IDS = {"raw": 0, "uniform": 1, "codebook": 2}
SCHEME_NAMES = {v: k for k, v in SCHEME_IDS.items()}
GRANULARITY_TENSOR, GRANULARITY_CHANNEL, GRANULARITY_BLOCK = 0, 1, 2
CODED_PARAMS = 0x80  # granularity flag since 2.2: scales and zero points as symbol streams of their bit patterns
MAX_ELEMENTS = 1 << 40
LATEST = 2  # the layout written by default: the container's major version


@dataclass
class RecordHeader:
    """The fixed part of a record, parsed and validated; `reader` sits at the mask stream."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    scheme: str
    bits: int
    n_kept: int
    params: dict
    reader: Reader
    major: int

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def nbytes(self) -> int:
        return self.size * itemsize(self.dtype)


@dataclass
class RecordSizes:
    """Byte sizes of a record's parts (for statistics)."""

    total: int
    mask: int
    values: int
    mask_codec: str
    value_codec: str


def _kept_grid(mask: np.ndarray | None, shape: tuple[int, ...], size: int) -> KeptGrid | None:
    if size == 0:
        return None
    rows, cols = view_2d(shape, size)
    return KeptGrid(rows, cols, None if mask is None else mask.reshape(rows, cols))


def value_limit(t_scheme: str, bits: int, dtype: str, params: dict) -> int:
    if t_scheme == "raw":
        return 1 << (8 * itemsize(dtype))
    if t_scheme == "codebook":
        return len(params["centroids"])
    return 1 << bits


def encode_record(t: QuantizedTensor, major: int = LATEST) -> bytes:
    """The bytes of one TENS section for `t`, in the record layout of container version `major`."""
    name = t.name.encode("utf-8", "surrogatepass")
    w = Writer()
    short, count = (w.u16, w.u64) if major == 1 else (w.varint, w.varint)
    short(len(name)).raw(name).u8(ELEM_TYPES[t.dtype]).u8(len(t.shape))
    for d in t.shape:
        count(d)
    w.u8(SCHEME_IDS[t.scheme]).u8(t.bits)
    count(t.n_kept)
    if t.scheme == "uniform":
        gran = GRANULARITY_TENSOR if t.axis is None else GRANULARITY_BLOCK if t.block_size else GRANULARITY_CHANNEL
        coded = coded_params(t) if major >= 2 else None
        w.u8(gran | (CODED_PARAMS if coded is not None else 0)).u8(t.axis or 0)
        count(t.block_size)
        if coded is not None:
            w.raw(coded)
        else:
            w.array(t.scale.reshape(-1), "<f4").array(t.zero_point.reshape(-1), "<f4")
    elif t.scheme == "codebook":
        short(t.centroids.size).array(t.centroids, "<f4")
    mask_stream = masks.encode(t.mask, t.shape)
    limit = 1 << (8 * itemsize(t.dtype)) if t.scheme == "raw" else (
        t.centroids.size if t.scheme == "codebook" else 1 << t.bits)
    value_stream = symbols.encode(t.codes, limit, grid=_kept_grid(t.mask, t.shape, t.size),
                                  itemsize=itemsize(t.dtype) if t.scheme == "raw" else None,
                                  zstd_level=symbols.LOSSLESS_ZSTD_LEVEL if t.dtype in INTEGER_DTYPES else None)
    count(len(mask_stream)).raw(mask_stream)
    if major == 1:
        w.u64(len(value_stream))
    return w.raw(value_stream).bytes()


def coded_params(t: QuantizedTensor) -> bytes | None:
    """A uniform record's scales then zero points as two symbol streams of their float32 bit patterns (since
    2.2), or None where the plain float32 arrays are no longer: many channels whose zero points repeat and
    whose scales carry few significant bits (passes/quant/uniform.py rounds them) code in a fraction."""
    streams = b"".join(symbols.encode(np.ascontiguousarray(a, "<f4").reshape(-1).view("<u4"), 1 << 32, itemsize=4)
                       for a in (t.scale, t.zero_point))
    return streams if len(streams) < 8 * t.scale.size else None


def record_minor(t: QuantizedTensor) -> int:
    """The lowest minor version of major 2 that describes `t`'s record: 1 for an integer element type, 2 for
    coded uniform parameters, else 0."""
    if t.dtype in INTEGER_DTYPES:
        return 1
    return 2 if t.scheme == "uniform" and coded_params(t) is not None else 0


def _short(r: Reader, major: int, what: str) -> int:
    """A name length or codebook size: u16 in 1.x, a varint (<= 65535) since 2.0."""
    return r.u16(what) if major == 1 else r.varint(what, 0xFFFF)


def _count(r: Reader, major: int, what: str) -> int:
    """A dimension, count or stream length: u64 in 1.x, a varint since 2.0."""
    return r.u64(what) if major == 1 else r.varint(what)


def read_header(data, where: str, major: int = LATEST) -> RecordHeader:
    """Parse and validate a record's fixed part (no allocation beyond its parameters)."""
    r = Reader(data, where)
    name_len = _short(r, major, "name length")
    try:
        name = bytes(r.take(name_len, "name")).decode("utf-8", "surrogatepass")
    except UnicodeDecodeError:
        raise r.fail("tensor name is not UTF-8") from None
    if not name:
        raise r.fail("empty tensor name")
    r.where = f"{where} (tensor {name!r})"
    elem = r.u8("element type")
    if elem not in DTYPE_NAMES:
        raise r.fail(f"unsupported element type {elem} (written by a newer evonnx?)")
    dtype = DTYPE_NAMES[elem]
    ndim = r.u8("rank")
    if ndim > MAX_NDIM:
        raise r.fail(f"rank {ndim} exceeds {MAX_NDIM}")
    shape = tuple(_count(r, major, "dimension") for _ in range(ndim))
    size = 1
    for d in shape:
        if d > MAX_ELEMENTS:
            raise r.fail(f"dimension {d} exceeds 2^40")
        size *= d
        if size > MAX_ELEMENTS:
            raise r.fail(f"shape {shape} has more than 2^40 elements")
    scheme_id = r.u8("scheme")
    if scheme_id not in SCHEME_NAMES:
        raise r.fail(f"unknown scheme {scheme_id}")
    scheme = SCHEME_NAMES[scheme_id]
    if dtype in INTEGER_DTYPES and scheme != "raw":
        raise r.fail(f"{dtype} record with the {scheme} scheme (integers are stored raw)")
    bits = r.u8("bits")
    n_kept = _count(r, major, "kept count")
    if n_kept > size:
        raise r.fail(f"kept count {n_kept} exceeds the {size} elements")
    params: dict = {}
    if scheme == "raw":
        if bits != 8 * itemsize(dtype):
            raise r.fail(f"raw {dtype} must have {8 * itemsize(dtype)} bits, got {bits}")
    elif not 1 <= bits <= 8:
        raise r.fail(f"{scheme} bits {bits} outside 1..8")
    if scheme == "uniform":
        flags = r.u8("granularity")
        coded = major >= 2 and bool(flags & CODED_PARAMS)
        gran = flags & ~CODED_PARAMS if coded else flags
        axis = r.u8("axis")
        block = _count(r, major, "block size")
        if gran > GRANULARITY_BLOCK:
            raise r.fail(f"unknown granularity {gran}")
        if gran == GRANULARITY_TENSOR:
            if axis or block:
                raise r.fail("per-tensor parameters with an axis or block size")
            params["axis"], params["block_size"] = None, 0
        else:
            if axis >= ndim:
                raise r.fail(f"axis {axis} out of range for rank {ndim}")
            if (gran == GRANULARITY_BLOCK) != (block > 0):
                raise r.fail("block size must be > 0 exactly for blocked granularity")
            params["axis"], params["block_size"] = axis, block
        want = scale_shape(shape, params["axis"], params["block_size"])
        count = int(np.prod(want, dtype=np.int64))
        for key, what in (("scale", "scales"), ("zero_point", "zero points")):
            values = (symbols.decode(r, count, 1 << 32, np.uint32, what=what).view("<f4") if coded
                      else r.array("<f4", count, what))
            params[key] = values.reshape(want)
    elif scheme == "codebook":
        k = _short(r, major, "codebook size")
        if not 1 <= k <= 1 << bits:
            raise r.fail(f"codebook size {k} outside 1..{1 << bits}")
        params["centroids"] = r.array("<f4", k, "centroids")
    return RecordHeader(name, shape, dtype, scheme, bits, n_kept, params, r, major)


def read_payload(h: RecordHeader) -> tuple[QuantizedTensor, RecordSizes]:
    """Decode the mask and value streams of a parsed record into a QuantizedTensor."""
    r = h.reader
    mask_len = _count(r, h.major, "mask stream length")
    start = r.pos
    if mask_len > r.left:
        raise r.fail(f"truncated mask stream (declares {mask_len} bytes, {r.left} left)")
    mr = Reader(r.buf, r.where, start, start + mask_len)
    mask = masks.decode(mr, h.shape, h.n_kept, "mask stream")
    mr.expect_end()
    r.pos = start + mask_len
    mask_codec = masks.CODEC_NAMES[r.buf[start]] if mask_len else "?"
    value_len = r.u64("value stream length") if h.major == 1 else r.left
    start = r.pos
    if value_len > r.left:
        raise r.fail(f"truncated value stream (declares {value_len} bytes, {r.left} left)")
    vr = Reader(r.buf, r.where, start, start + value_len)
    limit = value_limit(h.scheme, h.bits, h.dtype, h.params)
    dtype = pattern_dtype(h.dtype) if h.scheme == "raw" else np.uint8
    codes = symbols.decode(vr, h.n_kept, limit, dtype, grid=_kept_grid(mask, h.shape, h.size),
                           what="value stream")
    vr.expect_end()
    r.pos = start + value_len
    r.expect_end()
    value_codec = symbols.CODEC_NAMES.get(r.buf[start], "?") if value_len else "?"
    try:
        t = QuantizedTensor(h.name, h.shape, h.dtype, h.scheme, h.bits, codes, mask, **h.params)
    except EvxFormatError as exc:
        raise r.fail(str(exc)) from None
    return t, RecordSizes(r.end, int(mask_len), int(value_len), mask_codec, value_codec)

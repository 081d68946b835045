"""Bounds-checked little-endian reading and writing of the container's primitive fields.

Every read names what it was reading, so a short or inconsistent buffer becomes one EvxFormatError
such as "truncated tensor 'w': value stream (need 12 bytes at offset 40, 3 left)".
"""
from __future__ import annotations

import struct

import numpy as np

from evonnx.errors import EvxFormatError

_U8, _U16, _U32, _U64 = struct.Struct("<B"), struct.Struct("<H"), struct.Struct("<I"), struct.Struct("<Q")
_F32 = struct.Struct("<f")


class Reader:
    """Sequential reader over a bytes-like object; `where` prefixes every error message."""

    def __init__(self, data, where: str, start: int = 0, end: int | None = None):
        self.buf = memoryview(data).cast("B")
        self.pos = start
        self.end = len(self.buf) if end is None else end
        self.where = where

    def fail(self, message: str) -> EvxFormatError:
        return EvxFormatError(f"{self.where}: {message}")

    @property
    def left(self) -> int:
        return self.end - self.pos

    def take(self, n: int, what: str) -> memoryview:
        if n < 0 or n > self.left:
            raise self.fail(f"truncated {what} (need {n} bytes at offset {self.pos}, {self.left} left)")
        view = self.buf[self.pos:self.pos + n]
        self.pos += n
        return view

    def _unpack(self, st: struct.Struct, what: str):
        return st.unpack(self.take(st.size, what))[0]

    def u8(self, what: str) -> int:
        return self._unpack(_U8, what)

    def u16(self, what: str) -> int:
        return self._unpack(_U16, what)

    def u32(self, what: str) -> int:
        return self._unpack(_U32, what)

    def u64(self, what: str) -> int:
        return self._unpack(_U64, what)

    def f32(self, what: str) -> float:
        return self._unpack(_F32, what)

    def varint(self, what: str, limit: int = (1 << 64) - 1) -> int:
        """Unsigned LEB128 (at most 10 bytes), checked against `limit`."""
        value = shift = 0
        for _ in range(10):
            byte = self.u8(what)
            value |= (byte & 0x7F) << shift
            if not byte & 0x80:
                if value > limit:
                    raise self.fail(f"{what} = {value} exceeds the limit {limit}")
                return value
            shift += 7
        raise self.fail(f"{what}: varint longer than 10 bytes")

    def array(self, dtype: str, count: int, what: str) -> np.ndarray:
        """`count` little-endian items as a fresh, aligned, native-order array."""
        dt = np.dtype(dtype)
        if count < 0 or count > self.left // max(dt.itemsize, 1):
            raise self.fail(f"truncated {what} (need {count} x {dt.itemsize} bytes at offset {self.pos}, "
                            f"{self.left} left)")
        raw = self.take(count * dt.itemsize, what)
        return np.frombuffer(raw, dtype=dt).astype(dt.newbyteorder("="), copy=True)

    def varints(self, count: int, what: str, limit: int) -> np.ndarray:
        """`count` LEB128 values (vectorised), each <= limit, as int64."""
        if count == 0:
            return np.zeros(0, np.int64)
        chunk = np.frombuffer(self.buf[self.pos:min(self.end, self.pos + 9 * count)], dtype=np.uint8)
        ends = np.flatnonzero(chunk < 0x80)
        if ends.size < count:
            raise self.fail(f"truncated {what} ({count} varints expected, {ends.size} complete)")
        stop = int(ends[count - 1]) + 1
        body = chunk[:stop].astype(np.int64)
        starts = np.concatenate(([0], ends[:count - 1] + 1))
        lengths = ends[:count] + 1 - starts
        if int(lengths.max()) > 9:
            raise self.fail(f"{what}: varint too long")
        group = np.repeat(np.arange(count), lengths)
        shift = 7 * (np.arange(stop) - np.repeat(starts, lengths))
        values = np.zeros(count, np.int64)
        np.add.at(values, group, (body & 0x7F) << shift)
        if int(values.max()) > limit:
            raise self.fail(f"{what}: value {int(values.max())} exceeds the limit {limit}")
        self.pos += stop
        return values

    def expect_end(self) -> None:
        if self.pos != self.end:
            raise self.fail(f"{self.end - self.pos} unexpected trailing bytes")


class Writer:
    """Append-only little-endian writer into a bytearray."""

    def __init__(self):
        self.buf = bytearray()

    def u8(self, v: int) -> "Writer":
        self.buf += _U8.pack(v)
        return self

    def u16(self, v: int) -> "Writer":
        self.buf += _U16.pack(v)
        return self

    def u32(self, v: int) -> "Writer":
        self.buf += _U32.pack(v)
        return self

    def u64(self, v: int) -> "Writer":
        self.buf += _U64.pack(v)
        return self

    def raw(self, data) -> "Writer":
        self.buf += data
        return self

    def varint(self, v: int) -> "Writer":
        self.buf += encode_varints(np.array([v], dtype=np.uint64))
        return self

    def array(self, arr: np.ndarray, dtype: str) -> "Writer":
        self.buf += np.ascontiguousarray(arr, dtype=np.dtype(dtype)).tobytes()
        return self

    def bytes(self) -> bytes:
        return bytes(self.buf)


def encode_varints(values: np.ndarray) -> bytes:
    """Unsigned LEB128 of each value (vectorised)."""
    v = np.asarray(values, dtype=np.uint64).ravel()
    if v.size == 0:
        return b""
    nbits = np.maximum(1, 64 - _leading_zeros(v))
    lengths = (nbits + 6) // 7
    total = int(lengths.sum())
    idx = np.repeat(np.arange(v.size), lengths)
    starts = np.repeat(np.cumsum(lengths) - lengths, lengths)
    k = np.arange(total) - starts
    out = ((v[idx] >> (7 * k).astype(np.uint64)) & np.uint64(0x7F)).astype(np.uint8)
    out[k < np.repeat(lengths - 1, lengths)] |= 0x80
    return out.tobytes()


def _leading_zeros(v: np.ndarray) -> np.ndarray:
    """Leading zero bits of uint64 values (vectorised, exact)."""
    n = np.zeros(v.shape, np.int64)
    x = v.copy()
    for shift in (32, 16, 8, 4, 2, 1):
        small = x < (np.uint64(1) << np.uint64(64 - shift))
        n[small] += shift
        x[small] <<= np.uint64(shift)
    n[v == 0] = 64
    return n

"""QuantizedTensor, the record a compressed weight travels in, and `dequantize`, its one meaning.

The quantize pass builds these records at search time and the decoder rebuilds them from a .evx
file; both turn them into weights with `dequantize`, so the searched and the shipped weights are
bit-identical by construction.

Conventions (also in SPEC.md):

* ``mask`` is a bool array of ``shape``; True = kept. ``None`` means every entry is kept (dense).
  Entries that are not kept dequantize to +0.0 exactly, whatever the codes or parameters say.
* ``codes`` holds one code per kept entry, in C (row-major) order of the kept positions, so
  ``len(codes) == mask.sum()`` (or ``size`` when dense).
* ``scheme == "raw"``: codes are the little-endian bit patterns of the kept values in the original
  dtype (uint16 for float16/bfloat16, uint32 for float32, uint64 for float64, uint8 for int8/uint8);
  lossless, -0.0 and NaN payloads included. ``bits`` is 8 * itemsize. Integer dtypes (weights that
  came quantized) take this scheme only.
* ``scheme == "uniform"``: codes are unsigned, 0 <= q < 2**bits (1 <= bits <= 8), and
  ``w = (float32(q) - zero_point) * scale``: a float32 subtraction then a float32 multiplication,
  each rounded to nearest-even. ``scale`` and ``zero_point`` are float32 (any finite value; an
  integer zero_point is exact in float32, mid-tread symmetric is 2**(bits-1), mid-rise symmetric is
  (2**bits - 1) / 2). Granularity: ``axis=None`` per tensor (scale shape ``()``); ``axis=a,
  block_size=0`` per channel (scale shape ``(shape[a],)``); ``axis=a, block_size=B`` blocks of B
  along a (scale shape = ``shape`` with ``shape[a]`` replaced by ``ceil(shape[a] / B)``, as ONNX
  DequantizeLinear-21 blocked quantization). ``zero_point`` has the shape of ``scale``.
* ``scheme == "codebook"``: ``w = centroids[q]`` with float32 centroids, 1 <= len <= 2**bits.
* The float32 result is cast to ``dtype`` (round to nearest-even) for float16/bfloat16/float64
  weights of the uniform and codebook schemes.

Typical use in a quantize pass::

    t = QuantizedTensor.uniform(name, w.shape, w.dtype.name, 4, codes, scale, zero_point, mask=keep, axis=0)
    state_weight = dequantize(t)     # what the search measures; the decoder rebuilds exactly this
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from evonnx.errors import EvxFormatError
from evonnx.formats.dtypes import INTEGER_DTYPES, dtype_name, np_dtype, pattern_dtype

SCHEMES = ("raw", "uniform", "codebook")
MAX_NDIM = 32
MAX_NAME_BYTES = 65535


@dataclass(eq=False)
class QuantizedTensor:
    """One compressed weight: shape, dtype, keep-mask, scheme and the codes of the kept entries.

    Construct directly or with `raw`, `uniform`, `codebook`; the constructor checks every field
    and normalises arrays (bool mask, uint8 codes for uniform/codebook, float32 parameters), raising
    EvxFormatError naming what is wrong.
    """

    name: str
    shape: tuple[int, ...]
    dtype: str                          # original numpy dtype name: float32, float16, bfloat16, float64, int8, uint8
    scheme: str                         # "raw", "uniform" or "codebook"
    bits: int                           # 1..8 for uniform/codebook, 8 * itemsize for raw
    codes: np.ndarray                   # 1-D codes of the kept entries in C order
    mask: np.ndarray | None = None      # bool, shape == shape, True = kept; None = dense
    scale: np.ndarray | None = None     # uniform: float32, see module doc for its shape
    zero_point: np.ndarray | None = None  # uniform: float32, same shape as scale
    axis: int | None = None             # uniform: channel / block axis, None = per tensor
    block_size: int = 0                 # uniform with axis: 0 = per channel, B > 0 = blocks of B
    centroids: np.ndarray | None = None  # codebook: float32, 1 <= len <= 2**bits

    def __post_init__(self) -> None:
        where = f"tensor {self.name!r}"
        if not isinstance(self.name, str) or not self.name:
            raise EvxFormatError(f"tensor name must be a non-empty string, got {self.name!r}")
        if len(self.name.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES:
            raise EvxFormatError(f"{where}: name longer than {MAX_NAME_BYTES} bytes")
        try:
            self.shape = tuple(int(d) for d in self.shape)
        except (TypeError, ValueError):
            raise EvxFormatError(f"{where}: shape must be a tuple of ints, got {self.shape!r}") from None
        if len(self.shape) > MAX_NDIM or any(d < 0 for d in self.shape):
            raise EvxFormatError(f"{where}: bad shape {self.shape} (dims >= 0, at most {MAX_NDIM} dims)")
        self.dtype = dtype_name(np_dtype(str(self.dtype)))
        if self.scheme not in SCHEMES:
            raise EvxFormatError(f"{where}: unknown scheme {self.scheme!r} (expected one of {SCHEMES})")
        if self.dtype in INTEGER_DTYPES and self.scheme != "raw":
            raise EvxFormatError(f"{where}: {self.dtype} tensors take the raw (lossless) scheme only")
        self.bits = int(self.bits)
        if self.mask is not None:
            mask = np.asarray(self.mask)
            if mask.dtype != np.bool_ or mask.shape != self.shape:
                raise EvxFormatError(f"{where}: mask must be a bool array of shape {self.shape}, "
                                     f"got {mask.dtype} {mask.shape}")
            self.mask = np.asarray(mask, order="C")
        n_kept = self.n_kept
        codes = np.asarray(self.codes)
        if codes.ndim != 1 or codes.shape[0] != n_kept:
            raise EvxFormatError(f"{where}: expected {n_kept} codes (one per kept entry), got shape {codes.shape}")
        if self.scheme == "raw":
            self._check_raw(codes, where)
        else:
            self._check_coded(codes, where)

    # -- validation ---------------------------------------------------------------------------
    def _check_raw(self, codes: np.ndarray, where: str) -> None:
        pattern = pattern_dtype(self.dtype)
        if self.bits != 8 * pattern.itemsize:
            raise EvxFormatError(f"{where}: raw {self.dtype} needs bits={8 * pattern.itemsize}, got {self.bits}")
        same_width = codes.dtype.kind == "u" and codes.dtype.itemsize == pattern.itemsize
        if codes.dtype == np_dtype(self.dtype) or same_width:
            self.codes = np.ascontiguousarray(codes).view(pattern) if codes.size else np.zeros(0, pattern)
        else:
            raise EvxFormatError(f"{where}: raw codes must be {self.dtype} values or {pattern} bit patterns, "
                                 f"got {codes.dtype}")
        if self.scale is not None or self.zero_point is not None or self.centroids is not None or self.axis is not None:
            raise EvxFormatError(f"{where}: raw scheme takes no scale, zero_point, axis or centroids")

    def _check_coded(self, codes: np.ndarray, where: str) -> None:
        if not 1 <= self.bits <= 8:
            raise EvxFormatError(f"{where}: {self.scheme} takes 1 to 8 bits, got {self.bits}")
        if codes.size and codes.dtype.kind not in "ui":
            raise EvxFormatError(f"{where}: codes must be integers, got {codes.dtype}")
        if codes.size and (int(codes.min()) < 0 or int(codes.max()) >= 1 << self.bits):
            raise EvxFormatError(f"{where}: codes must lie in [0, {(1 << self.bits) - 1}] for {self.bits} bits")
        self.codes = np.ascontiguousarray(codes, dtype=np.uint8)
        if self.scheme == "uniform":
            self._check_uniform(where)
        else:
            self._check_codebook(where)

    def _check_uniform(self, where: str) -> None:
        if self.centroids is not None:
            raise EvxFormatError(f"{where}: uniform scheme takes no centroids")
        if self.scale is None or self.zero_point is None:
            raise EvxFormatError(f"{where}: uniform scheme needs scale and zero_point")
        self.block_size = int(self.block_size)
        if self.axis is None:
            if self.block_size:
                raise EvxFormatError(f"{where}: block_size needs an axis")
            want: tuple[int, ...] = ()
        else:
            ndim = len(self.shape)
            axis = int(self.axis)
            if not -ndim <= axis < ndim:
                raise EvxFormatError(f"{where}: axis {axis} out of range for shape {self.shape}")
            self.axis = axis % ndim
            if self.block_size < 0:
                raise EvxFormatError(f"{where}: block_size must be >= 0, got {self.block_size}")
            want = scale_shape(self.shape, self.axis, self.block_size)
        count = int(np.prod(want, dtype=np.int64))
        for field in ("scale", "zero_point"):
            arr = np.asarray(getattr(self, field))
            if arr.size != count:
                raise EvxFormatError(f"{where}: {field} must have shape {want}, got {arr.shape}")
            arr = np.ascontiguousarray(arr, dtype=np.float32).reshape(want)
            if not np.all(np.isfinite(arr)):
                raise EvxFormatError(f"{where}: {field} must be finite")
            setattr(self, field, arr)

    def _check_codebook(self, where: str) -> None:
        if self.scale is not None or self.zero_point is not None or self.axis is not None:
            raise EvxFormatError(f"{where}: codebook scheme takes no scale, zero_point or axis")
        if self.centroids is None:
            raise EvxFormatError(f"{where}: codebook scheme needs centroids")
        cb = np.ascontiguousarray(self.centroids, dtype=np.float32).ravel()
        if not 1 <= cb.size <= 1 << self.bits:
            raise EvxFormatError(f"{where}: codebook needs 1 to {1 << self.bits} centroids, got {cb.size}")
        if not np.all(np.isfinite(cb)):
            raise EvxFormatError(f"{where}: centroids must be finite")
        if self.codes.size and int(self.codes.max()) >= cb.size:
            raise EvxFormatError(f"{where}: code {int(self.codes.max())} has no centroid ({cb.size} centroids)")
        self.centroids = cb

    # -- constructors -------------------------------------------------------------------------
    @classmethod
    def raw(cls, name: str, array: np.ndarray, mask: np.ndarray | None = None) -> "QuantizedTensor":
        """A lossless record of `array` (kept entries only when `mask` is given; the rest become zero)."""
        array = np.asarray(array)
        dtype = dtype_name(array.dtype)
        pattern = pattern_dtype(dtype)
        flat = np.ascontiguousarray(array).reshape(-1).view(pattern)
        if mask is not None:
            mask = np.asarray(mask)
            if mask.dtype != np.bool_ or mask.shape != array.shape:
                raise EvxFormatError(f"tensor {name!r}: mask must be a bool array of shape {array.shape}")
            flat = flat[mask.reshape(-1)]
        return cls(name, array.shape, dtype, "raw", 8 * pattern.itemsize, flat, mask)

    @classmethod
    def uniform(cls, name: str, shape, dtype: str, bits: int, codes, scale, zero_point,
                mask: np.ndarray | None = None, axis: int | None = None, block_size: int = 0) -> "QuantizedTensor":
        """A uniform record: w = (float32(q) - zero_point) * scale (see module doc for granularity)."""
        return cls(name, tuple(shape), dtype, "uniform", bits, codes, mask, scale=scale, zero_point=zero_point,
                   axis=axis, block_size=block_size)

    @classmethod
    def codebook(cls, name: str, shape, dtype: str, bits: int, codes, centroids,
                 mask: np.ndarray | None = None) -> "QuantizedTensor":
        """A codebook record: w = centroids[q]."""
        return cls(name, tuple(shape), dtype, "codebook", bits, codes, mask, centroids=centroids)

    # -- sizes --------------------------------------------------------------------------------
    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def n_kept(self) -> int:
        return self.size if self.mask is None else int(np.count_nonzero(self.mask))

    @property
    def sparsity(self) -> float:
        """Fraction of entries not kept (0.0 for an empty tensor)."""
        return 1.0 - self.n_kept / self.size if self.size else 0.0

    @property
    def nbytes(self) -> int:
        """Bytes of the dense weight in its original dtype."""
        return self.size * np_dtype(self.dtype).itemsize


def scale_shape(shape: tuple[int, ...], axis: int | None, block_size: int) -> tuple[int, ...]:
    """Shape of scale / zero_point for a granularity (per tensor, per channel, blocked)."""
    if axis is None:
        return ()
    if block_size == 0:
        return (shape[axis],)
    return tuple(-(-d // block_size) if i == axis else d for i, d in enumerate(shape))


def _uniform_values(t: QuantizedTensor) -> np.ndarray:
    """float32 values of the kept entries (all entries when dense), in C order."""
    q = t.codes.astype(np.float32)  # a copy, updated in place below: the same float32 arithmetic, no temporaries
    scale, zp = t.scale, t.zero_point
    if t.axis is None:
        q -= zp
        q *= scale
        return q
    shape, axis = t.shape, t.axis
    outer = int(np.prod(shape[:axis], dtype=np.int64))
    inner = int(np.prod(shape[axis + 1:], dtype=np.int64))
    dim = shape[axis]
    if t.mask is None:  # dense: broadcast the parameters over a (outer, dim, inner) view
        q3 = q.reshape(outer, dim, inner)
        if t.block_size == 0:
            s3, z3 = scale.reshape(1, dim, 1), zp.reshape(1, dim, 1)
        else:
            nb = scale.shape[axis]
            s3 = np.repeat(scale.reshape(outer, nb, inner), t.block_size, axis=1)[:, :dim]
            z3 = np.repeat(zp.reshape(outer, nb, inner), t.block_size, axis=1)[:, :dim]
        q3 -= z3
        q3 *= s3
        return q
    if t.block_size == 0:  # each kept entry's channel, 4 bytes each
        channel = np.arange(dim, dtype=np.int32).reshape(1, dim, 1)
        group = np.broadcast_to(channel, (outer, dim, inner))[t.mask.reshape(outer, dim, inner)]
    else:
        kept = np.flatnonzero(t.mask)
        nb = scale.shape[axis]
        group = ((kept // (inner * dim)) * nb + (kept // inner) % dim // t.block_size) * inner + kept % inner
    flat_s, flat_z = scale.reshape(-1), zp.reshape(-1)
    q -= flat_z[group]
    q *= flat_s[group]
    return q


def dequantize(t: QuantizedTensor) -> np.ndarray:
    """The weight a record stands for: dtype `t.dtype`, shape `t.shape`, +0.0 where not kept.

    Deterministic: float32 arithmetic exactly as in the module doc, then one cast to `t.dtype`.
    """
    dt = np_dtype(t.dtype)
    size = t.size
    if t.scheme == "raw":
        pattern = pattern_dtype(t.dtype)
        if t.mask is None:
            return t.codes.astype(pattern, copy=True).view(dt).reshape(t.shape)
        out = np.zeros(size, pattern)
        out[t.mask.reshape(-1)] = t.codes
        return out.view(dt).reshape(t.shape)
    vals = t.centroids[t.codes] if t.scheme == "codebook" else _uniform_values(t)
    if t.mask is None:
        out = vals.reshape(t.shape)
    else:
        out = np.zeros(size, np.float32)
        out[t.mask.reshape(-1)] = vals
        out = out.reshape(t.shape)
    return out if dt == np.float32 else out.astype(dt)

"""Size statistics: the zero-order entropy bound of a record and what `evonnx inspect` reports."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from evonnx.formats.dtypes import INTEGER_DTYPES
from evonnx.formats.symbols import LOSSLESS_ZSTD_LEVEL, zstd_compress
from evonnx.formats.tensor import QuantizedTensor


def _entropy_bits(counts: np.ndarray) -> float:
    c = np.asarray(counts, dtype=np.float64)
    c = c[c > 0]
    n = c.sum()
    return float((c * np.log2(n / c)).sum()) if n else 0.0


def mask_entropy_bits(t: QuantizedTensor) -> float:
    """size * H(kept fraction): the zero-order cost of the mask (0 for a dense record)."""
    if t.mask is None:
        return 0.0
    k = t.n_kept
    return _entropy_bits(np.array([k, t.size - k]))


def code_entropy_bits(t: QuantizedTensor) -> float | None:
    """n_kept * H(codes) for uniform/codebook codes and integer values; None for raw floats."""
    if t.scheme == "raw" and t.dtype not in INTEGER_DTYPES:
        return None
    return _entropy_bits(np.bincount(t.codes, minlength=1 << t.bits))


def scheme_label(t: QuantizedTensor) -> str:
    """The scheme as inspect names it: `lossless-int8` / `lossless-uint8` for integer records."""
    return f"lossless-{t.dtype}" if t.dtype in INTEGER_DTYPES else t.scheme


def zstd_bytes(t: QuantizedTensor) -> int | None:
    """Bytes of zstd (LOSSLESS_ZSTD_LEVEL) on an integer record's values, the baseline its coding is
    chosen against; None for other records."""
    if t.dtype not in INTEGER_DTYPES:
        return None
    return len(zstd_compress(t.codes.tobytes(), LOSSLESS_ZSTD_LEVEL))


def entropy_bits(t: QuantizedTensor) -> float | None:
    """Zero-order empirical entropy of the codes including the mask, in bits.

    Equals the entropy of the tensor as one symbol stream over {pruned} + codes (chain rule):
    size * H_b(kept fraction) + n_kept * H(codes | kept). None for raw float records.
    """
    codes = code_entropy_bits(t)
    return None if codes is None else mask_entropy_bits(t) + codes


@dataclass
class TensorStats:
    """Per-tensor line of `evonnx inspect` (JSON keys are these field names)."""

    name: str
    shape: list[int]
    dtype: str
    scheme: str               # raw, uniform, codebook, or lossless-int8 / lossless-uint8
    bits: int
    elements: int
    kept: int
    sparsity: float
    mask_codec: str
    value_codec: str
    coded_bytes: int          # the whole record (header, parameters, streams)
    payload_bits: int         # mask + value streams, tables included, in bits
    entropy_bits: float | None  # zero-order bound of codes + mask (None for raw floats)
    bits_over_entropy: float | None  # payload_bits / entropy_bits
    original_bytes: int       # dense weight in its original dtype
    zstd_bytes: int | None    # integer records: zstd level 19 on the same values (None otherwise)


@dataclass
class ContainerStats:
    """Whole-file figures of `evonnx inspect --json` (keys are these field names)."""

    version: str
    container_bytes: int
    graph_bytes: int          # serialized ONNX graph without the recorded tensors
    graph_coded_bytes: int    # its zstd frame in the file
    original_bytes: int       # graph_bytes + sum of the tensors' original_bytes
    ratio: float              # original_bytes / container_bytes
    tensor_bytes: int         # sum of original_bytes over tensors
    tensor_coded_bytes: int   # sum of coded_bytes over tensors
    payload_bits: int
    entropy_bits: float | None
    bits_over_entropy: float | None
    tensors: list[TensorStats] = field(default_factory=list)

    def to_json(self) -> dict:
        return asdict(self)


def tensor_stats(t: QuantizedTensor, coded_bytes: int, mask_bytes: int, value_bytes: int,
                 mask_codec: str, value_codec: str) -> TensorStats:
    bound = entropy_bits(t)
    payload = 8 * (mask_bytes + value_bytes)
    return TensorStats(t.name, list(t.shape), t.dtype, scheme_label(t), t.bits, t.size, t.n_kept,
                       round(t.sparsity, 6), mask_codec, value_codec, coded_bytes, payload,
                       None if bound is None else round(bound, 1), None if not bound else round(payload / bound, 5),
                       t.nbytes, zstd_bytes(t))


def container_stats(version: str, container_bytes: int, graph_bytes: int, graph_coded_bytes: int,
                    tensors: list[TensorStats]) -> ContainerStats:
    tensor_bytes = sum(s.original_bytes for s in tensors)
    original = graph_bytes + tensor_bytes
    coded = [s for s in tensors if s.entropy_bits is not None]
    bound = sum(s.entropy_bits for s in coded) if coded else None
    payload = sum(s.payload_bits for s in coded)
    return ContainerStats(version, container_bytes, graph_bytes, graph_coded_bytes, original,
                          round(original / container_bytes, 4) if container_bytes else 0.0, tensor_bytes,
                          sum(s.coded_bytes for s in tensors), sum(s.payload_bits for s in tensors),
                          None if bound is None else round(bound, 1),
                          None if not bound else round(payload / bound, 5), tensors)

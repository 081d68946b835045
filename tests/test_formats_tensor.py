"""QuantizedTensor validation and `dequantize`, the one definition of a simulated weight."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
from onnx import TensorProto, helper

from evonnx.errors import EvxFormatError
from evonnx.formats import QuantizedTensor, dequantize, scale_shape

BF16 = helper.tensor_dtype_to_np_dtype(TensorProto.BFLOAT16)


def _naive_uniform(t: QuantizedTensor) -> np.ndarray:
    """Element by element, straight from the definition (float32 subtract, then multiply)."""
    out = np.zeros(t.size, np.float32)
    kept = np.arange(t.size) if t.mask is None else np.flatnonzero(t.mask)
    for q, k in zip(t.codes, kept):
        idx = np.unravel_index(k, t.shape) if t.shape else ()
        if t.axis is None:
            g = ()
        elif t.block_size == 0:
            g = (idx[t.axis],)
        else:
            g = tuple(i // t.block_size if a == t.axis else i for a, i in enumerate(idx))
        out[k] = (np.float32(q) - t.zero_point[g]) * t.scale[g]
    return out.reshape(t.shape)


@pytest.mark.parametrize("gran", ["tensor", "axis0", "axis-1", "block"])
@pytest.mark.parametrize("keep", [None, 0.3])
def test_uniform_matches_the_definition(gran, keep):
    rng = np.random.default_rng(0)
    shape = (5, 7, 3)
    mask = None if keep is None else rng.random(shape) < keep
    n = int(np.prod(shape)) if mask is None else int(mask.sum())
    kw = {"tensor": dict(axis=None), "axis0": dict(axis=0), "axis-1": dict(axis=-1),
          "block": dict(axis=1, block_size=3)}[gran]
    sshape = scale_shape(shape, None if kw["axis"] is None else kw["axis"] % 3, kw.get("block_size", 0))
    t = QuantizedTensor.uniform("w", shape, "float32", 5, rng.integers(0, 32, n),
                                rng.random(sshape).astype(np.float32) + 0.01,
                                rng.integers(0, 32, sshape) + rng.choice([0, 0.5], sshape), mask=mask, **kw)
    got = dequantize(t)
    assert got.dtype == np.float32 and got.shape == shape
    assert got.tobytes() == _naive_uniform(t).tobytes()


def test_pruned_entries_are_positive_zero_whatever_the_parameters():
    mask = np.array([[True, False], [False, True]])
    t = QuantizedTensor.uniform("w", (2, 2), "float32", 3, [3, 5], np.float32(-2.0), np.float32(1.25), mask=mask)
    w = dequantize(t)
    assert w.view(np.uint32)[0, 1] == 0 and w.view(np.uint32)[1, 0] == 0
    assert w[0, 0] == np.float32((3 - 1.25) * -2.0)
    cb = QuantizedTensor.codebook("c", (2, 2), "float32", 2, [1, 0], [-0.0, 7.0], mask=mask)
    assert dequantize(cb).tolist() == [[7.0, 0.0], [0.0, -0.0]]
    assert dequantize(cb).view(np.uint32)[0, 1] == 0


@pytest.mark.parametrize("dtype", [np.float32, np.float16, BF16, np.float64])
def test_raw_is_bit_exact_including_signed_zero_and_nan(dtype):
    vals = np.array([1.5, -0.0, np.nan, np.inf, -3.25, 0.0], np.float32).astype(dtype)
    pattern = vals.view({2: np.uint16, 4: np.uint32, 8: np.uint64}[np.dtype(dtype).itemsize])
    pattern[2] |= 1  # a NaN payload survives
    t = QuantizedTensor.raw("r", vals)
    assert dequantize(t).tobytes() == vals.tobytes()
    mask = np.array([True, True, True, False, True, False])
    t = QuantizedTensor.raw("r", vals, mask=mask)
    out = dequantize(t)
    assert out.dtype == np.dtype(dtype)
    assert out[mask].tobytes() == vals[mask].tobytes() and not out.view(pattern.dtype)[~mask].any()


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float64"])
def test_coded_weights_are_float32_then_cast(dtype):
    rng = np.random.default_rng(1)
    t = QuantizedTensor.uniform("w", (4, 6), dtype, 8, rng.integers(0, 256, 24), np.float32(0.0137), np.float32(127.5))
    f32 = QuantizedTensor.uniform("w", (4, 6), "float32", 8, t.codes, t.scale, t.zero_point)
    out = dequantize(t)
    assert out.dtype.name == dtype
    assert out.tobytes() == dequantize(f32).astype(out.dtype).tobytes()


@pytest.mark.parametrize("shape", [(), (0,), (3, 0, 2), (1,), (2, 1, 1, 1)])
def test_degenerate_shapes(shape):
    size = int(np.prod(shape))
    t = QuantizedTensor.uniform("w", shape, "float32", 2, np.ones(size, int), np.float32(1), np.float32(0))
    assert dequantize(t).shape == shape
    assert QuantizedTensor.raw("r", np.ones(shape, np.float16)).n_kept == size
    none = QuantizedTensor.raw("r", np.ones(shape, np.float32), mask=np.zeros(shape, bool))
    assert dequantize(none).tobytes() == np.zeros(shape, np.float32).tobytes()
    assert none.sparsity == (1.0 if size else 0.0)


def test_sizes_and_properties():
    mask = np.zeros((10, 10), bool)
    mask[:3] = True
    t = QuantizedTensor.codebook("c", (10, 10), "float16", 4, np.zeros(100, int), [0.5])
    assert (t.size, t.n_kept, t.nbytes, t.sparsity) == (100, 100, 200, 0.0)
    t = QuantizedTensor.codebook("c", (10, 10), "float16", 4, np.zeros(30, int), [0.5], mask=mask)
    assert (t.n_kept, t.sparsity) == (30, 0.7) and t.codes.dtype == np.uint8


BAD = {
    "code too large": lambda: QuantizedTensor.uniform("w", (4,), "float32", 2, [0, 1, 2, 4], 1.0, 0.0),
    "negative code": lambda: QuantizedTensor.uniform("w", (2,), "float32", 2, [0, -1], 1.0, 0.0),
    "float codes": lambda: QuantizedTensor.uniform("w", (2,), "float32", 2, [0.0, 1.0], 1.0, 0.0),
    "code count": lambda: QuantizedTensor.uniform("w", (4,), "float32", 2, [0, 1], 1.0, 0.0),
    "mask count": lambda: QuantizedTensor.uniform("w", (3,), "float32", 2, [0, 1, 1], 1.0, 0.0,
                                                   mask=np.array([True, False, True])),
    "mask shape": lambda: QuantizedTensor.uniform("w", (3,), "float32", 2, [0], 1.0, 0.0, mask=np.ones((1, 3), bool)),
    "mask dtype": lambda: QuantizedTensor.uniform("w", (3,), "float32", 2, [0, 0, 0], 1.0, 0.0, mask=np.ones(3)),
    "bits 9": lambda: QuantizedTensor.uniform("w", (2,), "float32", 9, [0, 1], 1.0, 0.0),
    "bits 0": lambda: QuantizedTensor.codebook("w", (2,), "float32", 0, [0, 0], [1.0]),
    "nan scale": lambda: QuantizedTensor.uniform("w", (2,), "float32", 2, [0, 1], np.nan, 0.0),
    "inf zero point": lambda: QuantizedTensor.uniform("w", (2,), "float32", 2, [0, 1], 1.0, np.inf),
    "scale shape": lambda: QuantizedTensor.uniform("w", (2, 3), "float32", 2, [0] * 6, [1.0, 2.0, 3.0], 0.0, axis=0),
    "axis range": lambda: QuantizedTensor.uniform("w", (2, 3), "float32", 2, [0] * 6, [1.0, 2.0], 0.0, axis=2),
    "block without axis": lambda: QuantizedTensor.uniform("w", (2,), "float32", 2, [0, 1], 1.0, 0.0, block_size=2),
    "missing scale": lambda: QuantizedTensor("w", (2,), "float32", "uniform", 2, [0, 1]),
    "codebook too big": lambda: QuantizedTensor.codebook("w", (2,), "float32", 1, [0, 1], [1.0, 2.0, 3.0]),
    "code without centroid": lambda: QuantizedTensor.codebook("w", (2,), "float32", 2, [0, 2], [1.0, 2.0]),
    "raw with scale": lambda: QuantizedTensor("w", (1,), "float32", "raw", 32, np.zeros(1, np.uint32), scale=1.0),
    "raw bits": lambda: QuantizedTensor("w", (1,), "float32", "raw", 16, np.zeros(1, np.uint32)),
    "raw int codes": lambda: QuantizedTensor("w", (1,), "float32", "raw", 32, np.zeros(1, np.int64)),
    "scheme": lambda: QuantizedTensor("w", (1,), "float32", "lut", 2, [0]),
    "dtype": lambda: QuantizedTensor.raw("w", np.zeros(2, np.int32)),
    "name": lambda: QuantizedTensor.raw("", np.zeros(2, np.float32)),
    "negative dim": lambda: QuantizedTensor("w", (-1,), "float32", "uniform", 2, [], scale=1.0, zero_point=0.0),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_records_raise_evx_format_error(case):
    with pytest.raises(EvxFormatError):
        BAD[case]()


def test_every_granularity_shape():
    shape = (6, 10, 2)
    for axis, block in itertools.product([None, 0, 1, 2], [0, 1, 4, 10, 11]):
        if axis is None and block:
            continue
        assert scale_shape(shape, axis, block) == (
            () if axis is None else (shape[axis],) if block == 0 else
            tuple(-(-d // block) if i == axis else d for i, d in enumerate(shape)))

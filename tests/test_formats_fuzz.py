"""Fuzzing the reader: mutated, truncated, spliced and zero-length containers.

Two properties:
* as stored (checksums intact): any change is an EvxFormatError, or decodes to exactly the original;
* resealed (checksums recomputed after changing a section, i.e. the decoders see the damage): an
  EvxFormatError or some result, never another exception, a hang or an unbounded allocation.
"""
from __future__ import annotations

import time

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper

from evonnx.errors import EvxFormatError
from evonnx.formats import QuantizedTensor, dequantize, encode_evx, read_evx
from evonnx.formats import container as ct

LIMIT = 16 << 20  # decoded bytes the fuzzed reader may allocate
SETTINGS = dict(deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def _smooth(rng, shape, keep):
    x = rng.normal(size=shape)
    for _ in range(6):
        for axis in (0, 1):
            x = (x + np.roll(x, 1, axis) + np.roll(x, -1, axis)) / 3
    return x > np.quantile(x, 1 - keep)


def _containers():
    rng = np.random.default_rng(2024)
    g = helper.make_graph([helper.make_node("Add", ["x", "b"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3])],
                          initializer=[helper.make_tensor("b", TensorProto.FLOAT, [3], [1.0, 2.0, 3.0])])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 10
    blob = _smooth(rng, (96, 80), 0.25)
    rs, cs = np.exp(rng.normal(0, 1, (40, 1))), np.exp(rng.normal(0, 1, (1, 56)))
    w = np.abs(rng.normal(size=(40, 56)) * rs * cs)
    mag = w > np.quantile(w, 0.8)
    sparse = rng.random((16, 90)) < 0.04
    q = np.clip(np.rint(rng.normal(size=(32, 48)) * np.exp(rng.normal(0, 1, (1, 48))) + 8), 0, 15).astype(int)
    q2 = np.clip(np.rint(rng.normal(size=(96, 160)) * np.exp(rng.normal(0, 1.5, (1, 160))) + 8), 0, 15).astype(int)
    keep2 = rng.random((96, 160)) < 0.2
    first = [
        QuantizedTensor.uniform("pyr", (96, 80), "float32", 4, rng.integers(0, 16, blob.sum()), 0.1, 7.5, mask=blob),
        QuantizedTensor.codebook("grid", (40, 56), "float16", 3, rng.integers(0, 6, mag.sum()), rng.normal(size=6),
                                 mask=mag),
        QuantizedTensor.uniform("runs", (16, 90), "bfloat16", 2, rng.integers(0, 4, sparse.sum()),
                                rng.random(16) + 0.1, np.full(16, 1.5), mask=sparse, axis=0),
        QuantizedTensor.uniform("ctx", (32, 48), "float64", 4, q.reshape(-1), 0.1, 8.0),
    ]
    second = [
        QuantizedTensor.raw("raw", rng.normal(size=(12, 10)).astype(np.float16).astype(np.float32),
                            mask=rng.random((12, 10)) < 0.5),
        QuantizedTensor.uniform("blocked", (6, 20), "float32", 5, rng.integers(0, 32, 120),
                                rng.random((6, 3)) + 0.1, rng.integers(0, 32, (6, 3)), axis=1, block_size=8),
        QuantizedTensor.raw("scalar", np.float64(-2.5)),
        QuantizedTensor.raw("empty", np.zeros((0, 4), np.float16)),
        QuantizedTensor.codebook("skewed", (30, 30), "float32", 4,
                                 np.minimum(rng.geometric(0.5, 900) - 1, 9), np.linspace(-1, 1, 10)),
        QuantizedTensor.uniform("sparse_ctx", (96, 160), "float32", 4, q2[keep2], 0.1, 8.0, mask=keep2),
    ]
    return [(encode_evx(model, ts, {"i": i}), ts) for i, ts in enumerate((first, second))]


CONTAINERS = _containers()


def _identical(c, originals) -> bool:
    return len(c.tensors) == len(originals) and all(
        dequantize(a).tobytes() == dequantize(b).tobytes() and a.name == b.name for a, b in zip(c.tensors, originals))


mutation = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 10 ** 9), st.integers(0, 7)),
    st.tuples(st.just("set"), st.integers(0, 10 ** 9), st.integers(0, 255)),
    st.tuples(st.just("truncate"), st.integers(0, 10 ** 9), st.just(0)),
    st.tuples(st.just("insert"), st.integers(0, 10 ** 9), st.binary(min_size=1, max_size=16)),
    st.tuples(st.just("delete"), st.integers(0, 10 ** 9), st.integers(1, 64)),
    st.tuples(st.just("splice"), st.integers(0, 10 ** 9), st.integers(0, 10 ** 9)),
)


def _mutate(data: bytes, other: bytes, ops) -> bytes:
    b = bytearray(data)
    for kind, pos, arg in ops:
        if not b:
            break
        p = pos % len(b)
        if kind == "flip":
            b[p] ^= 1 << arg
        elif kind == "set":
            b[p] = arg
        elif kind == "truncate":
            del b[p:]
        elif kind == "insert":
            b[p:p] = arg
        elif kind == "delete":
            del b[p:p + arg]
        elif kind == "splice":  # a run of bytes from the other container, in place
            q = arg % len(other)
            chunk = other[q:q + 64]
            b[p:p + len(chunk)] = chunk
    return bytes(b)


@settings(max_examples=400, **SETTINGS)
@given(which=st.integers(0, 1), ops=st.lists(mutation, min_size=1, max_size=3))
def test_mutated_files_fail_cleanly_or_decode_identically(which, ops):
    data, originals = CONTAINERS[which]
    bad = _mutate(data, CONTAINERS[1 - which][0], ops)
    try:
        c = read_evx(bad, max_output_bytes=LIMIT)
    except EvxFormatError:
        return
    assert bad == data or _identical(c, originals), "a changed file decoded to a different model"


@settings(max_examples=400, **SETTINGS)
@given(which=st.integers(0, 1), section=st.integers(0, 100), ops=st.lists(mutation, min_size=1, max_size=3))
def test_resealed_damage_never_crashes(which, section, ops):
    """Mutate one section's body, recompute every checksum, and decode: EvxFormatError or a result."""
    data, _ = CONTAINERS[which]
    _, secs = ct._parse_frame(data)
    parts = [(s.kind, bytes(data[s.offset:s.offset + s.length]), s.flags) for s in secs]
    k = section % len(parts)
    parts[k] = (parts[k][0], _mutate(parts[k][1], CONTAINERS[1 - which][0], ops), parts[k][2])
    start = time.perf_counter()
    try:
        read_evx(ct._assemble(parts), max_output_bytes=LIMIT)
    except EvxFormatError:
        pass
    assert time.perf_counter() - start < 10


def test_fuzzed_containers_cover_every_codec():
    seen = {name for data, _ in CONTAINERS for t in read_evx(data).stats.tensors
            for name in (t.mask_codec, t.value_codec)}
    assert {"runs", "pyramid", "grid", "bitmap", "all", "ans", "ans-grid", "packed", "const", "empty",
            "zstd-planes"} <= seen, seen


@pytest.mark.parametrize("cut", [0, 1, 7, 8, 11, 12, 31, 32, 47, 48, 100, -17, -16, -5, -4, -1])
def test_every_truncation_is_an_error(cut):
    data, _ = CONTAINERS[0]
    with pytest.raises(EvxFormatError):
        read_evx(data[:cut])


def test_zero_length_and_garbage():
    for bad in (b"", b"\x00" * 64, bytes(range(256)), b"\x89EVX\r\n\x1a\n" + b"\xff" * 100):
        with pytest.raises(EvxFormatError):
            read_evx(bad)

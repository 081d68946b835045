"""Entropy coding: every symbol and mask codec round-trips, and coded sizes sit at (or below) the bound."""
from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

from evonnx.formats import QuantizedTensor, encode_evx, read_evx
from evonnx.formats import ans, masks, symbols
from evonnx.formats.bytesio import Reader, encode_varints
from evonnx.formats.contexts import KeptGrid


def _roundtrip_symbols(sym, limit, grid=None, itemsize=None, dtype=np.int64):
    data = symbols.encode(sym, limit, grid=grid, itemsize=itemsize)
    r = Reader(data, "test")
    out = symbols.decode(r, len(sym), limit, dtype, grid=grid)
    r.expect_end()
    assert np.array_equal(out, np.asarray(sym).astype(dtype))
    return symbols.CODEC_NAMES[data[0]], len(data)


def test_symbol_codecs_roundtrip_and_are_chosen_when_they_win():
    rng = np.random.default_rng(0)
    assert _roundtrip_symbols(np.zeros(0, int), 16)[0] == "empty"
    assert _roundtrip_symbols(np.full(1000, 5), 16)[0] == "const"
    assert _roundtrip_symbols(rng.integers(0, 8, 50), 8)[0] == "packed"
    skewed = rng.geometric(0.5, 20000) - 1
    assert _roundtrip_symbols(np.minimum(skewed, 255), 256)[0] == "ans"
    rows, cols = 128, 256
    q = np.clip(np.rint(rng.normal(size=(rows, cols)) * np.exp(rng.normal(0, 1, (1, cols))) + 8), 0, 15).astype(int)
    assert _roundtrip_symbols(q.reshape(-1), 16, grid=KeptGrid(rows, cols, None))[0] == "ans-grid"
    for keep in (0.5, 0.15):  # both decoding paths: tiles (dense-ish) and sorting (sparse)
        mask = rng.random((rows, cols)) < keep
        codec, _ = _roundtrip_symbols(q[mask], 16, grid=KeptGrid(rows, cols, mask))
        assert codec == "ans-grid"
    halfs = rng.normal(size=3000).astype(np.float16).astype(np.float32).view(np.uint32)
    assert _roundtrip_symbols(halfs, 1 << 32, itemsize=4, dtype=np.uint32)[0] == "zstd-planes"
    wide = rng.integers(0, 1 << 62, 100, dtype=np.int64).astype(np.uint64)
    assert _roundtrip_symbols(wide, 1 << 64, dtype=np.uint64)[0] == "packed"


def test_streams_coded_and_decoded_a_chunk_at_a_time_are_the_same_streams(monkeypatch):
    """Large runs go to and from the coder in chunks (and packing and histograms a block at a time): the bytes
    and the symbols are those of one piece."""
    rng = np.random.default_rng(3)
    rows, cols = 96, 200
    q = np.clip(np.rint(rng.normal(size=(rows, cols)) * np.exp(rng.normal(0, 1, (1, cols))) + 8), 0, 15).astype(int)
    mask = rng.random((rows, cols)) < 0.5
    cases = [(np.minimum(rng.geometric(0.5, 20000) - 1, 255), 256, None),
             (q.reshape(-1), 16, KeptGrid(rows, cols, None)), (q[mask], 16, KeptGrid(rows, cols, mask)),
             (rng.integers(0, 1 << 13, 5000), 1 << 13, None)]
    whole = [symbols.encode(sym, limit, grid=grid) for sym, limit, grid in cases]
    monkeypatch.setattr(ans, "CODER_CHUNK", 777)
    monkeypatch.setattr(symbols, "_CHUNK", 1024)
    for (sym, limit, grid), data in zip(cases, whole):
        assert symbols.encode(sym, limit, grid=grid) == data
        assert _roundtrip_symbols(sym, limit, grid=grid)[0] == symbols.CODEC_NAMES[data[0]]


@pytest.mark.parametrize("width", [1, 2, 3, 5, 7, 8, 9, 13, 16, 31, 32, 33, 64])
def test_pack_unpack(width):
    rng = np.random.default_rng(width)
    top = (1 << width) - 1
    v = rng.integers(0, top, 1001, dtype=np.uint64, endpoint=True)
    data = symbols.pack(v, width)
    assert len(data) == -(-1001 * width // 8)
    assert np.array_equal(symbols.unpack(data, 1001, width, np.uint64), v)


def test_varints():
    values = np.array([0, 1, 127, 128, 300, 2 ** 32, 2 ** 63 - 1], np.uint64)
    data = encode_varints(values)
    r = Reader(data, "v")
    assert r.varints(len(values), "v", 2 ** 63).tolist() == [int(v) for v in values]
    r = Reader(encode_varints(np.array([2 ** 64 - 1], np.uint64)), "v")
    assert r.varint("v") == 2 ** 64 - 1


@pytest.mark.parametrize("a,precision", [(2, 1), (3, 2), (16, 12), (256, 24), (1000, 10)])
def test_frequency_tables_are_valid(a, precision):
    rng = np.random.default_rng(a)
    counts = rng.integers(0, 1000, a) * (rng.random(a) < 0.5)
    f = ans.quantize_counts(counts, precision)
    assert f.min() >= 1 and f.sum() == 1 << precision
    p, g = ans.best_table(counts)
    assert g.min() >= 1 and g.sum() == 1 << p


def _smooth_mask(rng, shape, keep, passes=4):
    x = rng.normal(size=shape)
    for _ in range(passes):
        for axis in (0, 1):
            x = (x + np.roll(x, 1, axis) + np.roll(x, -1, axis)) / 3
    return x > np.quantile(x, 1 - keep)


def _roundtrip_mask(mask):
    shape = mask.shape
    data = masks.encode(mask, shape)
    r = Reader(data, "test")
    out = masks.decode(r, shape, int(mask.sum()), "mask")
    r.expect_end()
    assert np.array_equal(np.ones(shape, bool) if out is None else out, mask)
    return masks.CODEC_NAMES[data[0]]


def test_mask_codecs_roundtrip_and_are_chosen_when_they_win():
    rng = np.random.default_rng(3)
    assert _roundtrip_mask(np.ones((3, 4), bool)) == "all"
    assert _roundtrip_mask(np.zeros((3, 4), bool)) == "none"
    assert _roundtrip_mask(rng.random((5, 7)) < 0.5) == "bitmap"
    assert _roundtrip_mask(rng.random((64, 200)) < 0.03) == "runs"
    assert _roundtrip_mask(rng.random((64, 200)) < 0.97) == "runs"
    assert _roundtrip_mask(_smooth_mask(rng, (96, 80), 0.2)) == "pyramid"
    rs, cs = np.exp(rng.normal(0, 1, (128, 1))), np.exp(rng.normal(0, 1, (1, 96)))
    w = np.abs(rng.normal(size=(128, 96)) * rs * cs)
    assert _roundtrip_mask(w > np.quantile(w, 0.8)) == "grid"


@pytest.mark.parametrize("shape", [(1, 300), (300, 1), (1,), (257,), (3, 5, 7, 2), (65, 33), (2, 2)])
@pytest.mark.parametrize("keep", [0.05, 0.5, 0.9])
def test_mask_codecs_on_odd_shapes(shape, keep):
    rng = np.random.default_rng(len(shape))
    mask = rng.random(shape) < keep
    _roundtrip_mask(mask)
    if mask.any() and not mask.all() and mask.size >= 4:
        rows = shape[0]
        m2 = mask.reshape(rows, -1)
        for enc, dec in ((masks._encode_pyramid, masks._decode_pyramid), (masks._encode_grid, masks._decode_grid)):
            data = enc(m2)
            if data is None:
                continue
            r = Reader(data, "m")
            r.u8("codec")
            assert np.array_equal(dec(r, *m2.shape, "m"), m2)
            r.expect_end()
        flat = mask.reshape(-1)
        data = masks._encode_runs(flat, int(flat.sum()))
        r = Reader(data, "m")
        r.u8("codec")
        assert np.array_equal(masks._decode_runs(r, flat.size, int(flat.sum()), "m"), flat)


# -- coded size against the zero-order bound ----------------------------------------------------------
def _ratio(t: QuantizedTensor) -> tuple[float, str, str]:
    model = helper.make_model(helper.make_graph([], "g", [], []))
    s = read_evx(encode_evx(model, [t])).stats.tensors[0]
    return s.bits_over_entropy, s.mask_codec, s.value_codec


def _grid4(values):
    s = np.abs(values).max() / 7.5
    return np.clip(np.rint(values / s + 7.5), 0, 15).astype(np.uint8)


SHAPE = (384, 512)


def test_zero_order_coding_is_within_2_percent_of_the_bound():
    rng = np.random.default_rng(5)
    mask = rng.random(SHAPE) < 0.1  # 90 % sparse, i.i.d.
    t = QuantizedTensor.uniform("w", SHAPE, "float32", 4, _grid4(rng.normal(size=mask.sum())), 0.1, 7.5, mask=mask)
    ratio, mcodec, vcodec = _ratio(t)
    assert ratio <= 1.02, (ratio, mcodec, vcodec)
    dense = QuantizedTensor.uniform("w", SHAPE, "float32", 8, np.clip(np.rint(rng.normal(size=SHAPE) * 20 + 128),
                                                                       0, 255).astype(int).reshape(-1), 0.1, 128)
    assert _ratio(dense)[0] <= 1.02


def test_context_models_go_below_the_bound_when_structure_exists():
    rng = np.random.default_rng(6)
    blob = _smooth_mask(rng, SHAPE, 0.1)
    t = QuantizedTensor.uniform("w", SHAPE, "float32", 4, _grid4(rng.normal(size=blob.sum())), 0.1, 7.5, mask=blob)
    ratio, mcodec, _ = _ratio(t)
    assert mcodec == "pyramid" and ratio < 0.85
    rs, cs = np.exp(rng.normal(0, 0.5, (SHAPE[0], 1))), np.exp(rng.normal(0, 0.5, (1, SHAPE[1])))
    w = rng.normal(size=SHAPE) * rs * cs
    mag = np.abs(w) > np.quantile(np.abs(w), 0.9)
    t = QuantizedTensor.uniform("w", SHAPE, "float32", 4, _grid4(w[mag]), 0.1, 7.5, mask=mag)
    ratio, mcodec, _ = _ratio(t)
    assert mcodec == "grid" and ratio < 0.85

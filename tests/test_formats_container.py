"""The .evx file: round trips of every dtype / shape / sparsity / scheme, layout rules, errors, atomic writes."""
from __future__ import annotations

import json
import os
import struct
import tracemalloc
import zlib

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from evonnx.errors import EvxFormatError
from evonnx.formats import QuantizedTensor, dequantize, encode_evx, read_evx, write_evx
from evonnx.formats import container as ct
from evonnx.formats.bytesio import encode_varints
from evonnx.formats.record import encode_record, record_minor
from legacy import as_version

DTYPES = ["float32", "float16", "bfloat16", "float64"]
SHAPES = [(), (0,), (4, 0, 3), (1,), (17,), (6, 9), (5, 4, 3, 2)]
KEEPS = [None, 1.0, 0.7, 0.1, 0.0]


def _model(initializers=()):
    g = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])], initializer=list(initializers))
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 10
    return m


def _make(rng, scheme, dtype, shape, keep, name="t"):
    mask = None if keep is None else rng.random(shape) < keep
    n = int(np.prod(shape)) if mask is None else int(mask.sum())
    if scheme == "raw":
        vals = rng.normal(size=shape).astype(np.float32).astype(ct_np(dtype))
        return QuantizedTensor.raw(name, vals, mask=mask)
    bits = int(rng.integers(1, 9))
    if scheme == "codebook":
        k = int(rng.integers(1, 2 ** bits + 1))
        return QuantizedTensor.codebook(name, shape, dtype, bits, rng.integers(0, k, n), rng.normal(size=k), mask=mask)
    axis = None if not shape or rng.random() < 0.4 else int(rng.integers(0, len(shape)))
    block = int(rng.integers(1, 4)) if axis is not None and rng.random() < 0.5 else 0
    from evonnx.formats import scale_shape
    ss = scale_shape(shape, axis, block)
    return QuantizedTensor.uniform(name, shape, dtype, bits, rng.integers(0, 2 ** bits, n),
                                   rng.random(ss) + 0.01, rng.integers(0, 2 ** bits, ss) + rng.choice([0, 0.5], ss),
                                   mask=mask, axis=axis, block_size=block)


def ct_np(dtype):
    from evonnx.formats.dtypes import np_dtype
    return np_dtype(dtype)


def _same(a: QuantizedTensor, b: QuantizedTensor) -> None:
    assert (a.name, a.shape, a.dtype, a.scheme, a.bits) == (b.name, b.shape, b.dtype, b.scheme, b.bits)
    assert np.array_equal(a.codes, b.codes)
    ma = np.ones(a.shape, bool) if a.mask is None else a.mask
    mb = np.ones(b.shape, bool) if b.mask is None else b.mask
    assert np.array_equal(ma, mb)
    da, db = dequantize(a), dequantize(b)
    assert da.dtype == db.dtype and da.shape == db.shape and da.tobytes() == db.tobytes()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("scheme", ["raw", "uniform", "codebook"])
def test_roundtrip_every_dtype_shape_sparsity(dtype, scheme):
    rng = np.random.default_rng(hash((dtype, scheme)) % 2 ** 32)
    ts = [_make(rng, scheme, dtype, shape, keep, name=f"t{i}_{j}")
          for i, shape in enumerate(SHAPES) for j, keep in enumerate(KEEPS)]
    meta = {"pipeline": {"bits": [2, 4]}, "metric": 0.5, "name": "ünï"}
    c = read_evx(encode_evx(_model(), ts, meta))
    coded = any(record_minor(t) == 2 for t in ts)  # parameters coded where shorter (2.2), else a 2.0 file
    assert c.meta == meta and c.version == (ct.MAJOR, 2 if coded else 0) and c.graph == _model()
    assert coded == (scheme == "uniform")
    assert [t.name for t in c.tensors] == [t.name for t in ts]
    for a, b in zip(ts, c.tensors):
        _same(a, b)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2 ** 32 - 1), dtype=st.sampled_from(DTYPES),
       scheme=st.sampled_from(["raw", "uniform", "codebook"]),
       shape=st.lists(st.integers(0, 7), min_size=0, max_size=4).map(tuple), keep=st.sampled_from(KEEPS))
def test_roundtrip_property(seed, dtype, scheme, shape, keep):
    t = _make(np.random.default_rng(seed), scheme, dtype, shape, keep)
    _same(t, read_evx(encode_evx(_model(), [t])).tensors[0])


def test_encoding_is_deterministic_and_sections_back_to_back():
    rng = np.random.default_rng(0)
    ts = [_make(rng, "uniform", "float32", (20, 30), 0.3, name=f"w{i}") for i in range(3)]
    a, b = encode_evx(_model(), ts, {"x": 1}), encode_evx(_model(), ts, {"x": 1})
    assert a == b
    _, sections = ct._parse_frame(a)
    assert [s.kind for s in sections] == [b"MANI", b"GRPH", b"META"] + [b"TENS"] * 3
    ends = [32 + 20 * len(sections)] + [s.offset + s.length for s in sections]
    assert [s.offset for s in sections] == ends[:-1] and ends[-1] == len(a) - 16  # no padding since 2.0
    assert struct.unpack_from("<HH", a, 8) == (2, max(record_minor(t) for t in ts))
    assert a[:8] == b"\x89EVX\r\n\x1a\n" and a[-16:-8] == b"EVXEND\x00\x00"


def test_paths_bytes_bytearray_memoryview(tmp_path):
    t = QuantizedTensor.raw("w", np.arange(6, dtype=np.float32))
    path = tmp_path / "m.evx"
    size = write_evx(path, _model(), [t], {"a": 1})
    data = path.read_bytes()
    assert size == len(data)
    for src in (path, str(path), data, bytearray(data), memoryview(data)):
        _same(t, read_evx(src).tensors[0])


def test_write_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "m.evx"
    t = QuantizedTensor.raw("w", np.arange(6, dtype=np.float32))
    write_evx(path, _model(), [t])
    before = path.read_bytes()
    with pytest.raises(EvxFormatError):
        write_evx(path, _model(), [t], {"bad": float("nan")})
    assert path.read_bytes() == before
    boom = RuntimeError("disk full")

    def failing_replace(src, dst):
        raise boom

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(RuntimeError):
        write_evx(path, _model(), [QuantizedTensor.raw("w", np.zeros(6, np.float32))])
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.evx"]  # no temporary file left behind
    assert oct(path.stat().st_mode & 0o777) != oct(0o600)


def test_writer_rejects_bad_inputs():
    t = QuantizedTensor.raw("w", np.zeros(2, np.float32))
    with pytest.raises(EvxFormatError, match="duplicate"):
        encode_evx(_model(), [t, t])
    init = numpy_helper.from_array(np.zeros(2, np.float32), "w")
    with pytest.raises(EvxFormatError, match="both a record and an initializer"):
        encode_evx(_model([init]), [t])
    ext = numpy_helper.from_array(np.zeros(2, np.float32), "e")
    ext.data_location = TensorProto.EXTERNAL
    with pytest.raises(EvxFormatError, match="external data"):
        encode_evx(_model([ext]), [t])
    with pytest.raises(EvxFormatError, match="JSON"):
        encode_evx(_model(), [t], {"x": object()})
    with pytest.raises(EvxFormatError, match="meta must be a dict"):
        encode_evx(_model(), [t], [1])
    with pytest.raises(EvxFormatError, match="ModelProto"):
        encode_evx(b"graph", [t])


# -- reader errors -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def blob():
    rng = np.random.default_rng(1)
    ts = [_make(rng, "uniform", "float32", (30, 40), 0.2, name=f"w{i}") for i in range(2)]
    return encode_evx(_model(), ts, {"m": 1})


def _sections(data):
    _, secs = ct._parse_frame(data)
    return [(s.kind, bytes(data[s.offset:s.offset + s.length]), s.flags) for s in secs]


def test_clear_errors_for_broken_files(blob, tmp_path):
    cases = {
        b"": "empty input",
        b"PK\x03\x04 not evx": "bad magic",
        blob[:7]: "bad magic",
        blob[:40]: "truncated",
        blob[:-1]: "truncated",
        blob + b"\x00": "unexpected bytes after the end",
        blob + blob: "unexpected bytes after the end",
    }
    for data, msg in cases.items():
        with pytest.raises(EvxFormatError, match=msg):
            read_evx(data)
    newer = bytearray(blob)
    newer[8:10] = struct.pack("<H", 3)
    with pytest.raises(EvxFormatError, match="newer than this reader"):
        read_evx(bytes(newer[:20]))
    with pytest.raises(EvxFormatError, match="no such file"):
        read_evx(tmp_path / "missing.evx")
    with pytest.raises(EvxFormatError, match="directory"):
        read_evx(tmp_path)


def test_corruption_is_located(blob):
    _, secs = ct._parse_frame(blob)
    tens = secs[3]
    for offset, msg in ((tens.offset + tens.length // 2, "section 3 \\(tensor record\\): checksum mismatch"),
                        (secs[1].offset + 3, "section 1 \\(graph\\): checksum mismatch"),
                        (25, "header checksum mismatch"),
                        (len(blob) - 12, "bad trailer")):
        bad = bytearray(blob)
        bad[offset] ^= 0x10
        with pytest.raises(EvxFormatError, match=msg):
            read_evx(bytes(bad))


def test_reads_1x_files_with_their_64_byte_alignment(blob):
    old = as_version(blob, (1, 1))
    assert len(old) > len(blob)
    c, new = read_evx(old), read_evx(blob)
    assert c.version == (1, 1) and c.meta == new.meta and c.graph == new.graph
    for a, b in zip(c.tensors, new.tensors):
        _same(a, b)
    frame = ct._parse_frame(old)[1]
    padding = next(s.offset + s.length for s in frame if s.length % 64)  # covered by the file checksum only
    bad = bytearray(old)
    bad[padding] ^= 0x10
    with pytest.raises(EvxFormatError, match="file checksum mismatch"):
        read_evx(bytes(bad))


def test_2x_sections_must_fill_the_file(blob):
    gap = bytearray(blob[:-16] + b"\x00" * 8 + blob[-16:])  # 8 bytes between the last section and the trailer
    gap[16:24] = struct.pack("<Q", len(gap))
    n = struct.unpack_from("<I", gap, 12)[0]
    gap[28:32] = struct.pack("<I", zlib.crc32(bytes(gap[:28]) + bytes(gap[32:32 + ct.SECTION.size * n])))
    gap[-4:] = struct.pack("<I", zlib.crc32(bytes(gap[:-4])))
    with pytest.raises(EvxFormatError, match="8 bytes between the last section and the trailer"):
        read_evx(bytes(gap))


def test_unknown_sections(blob):
    secs = _sections(blob)
    optional = ct._assemble(secs + [(b"XTRA", b"future data", 0)])
    assert read_evx(optional).meta == {"m": 1}
    required = ct._assemble(secs + [(b"XTRA", b"future data", 1)])
    with pytest.raises(EvxFormatError, match="unknown required section"):
        read_evx(required)


def test_meta_section_is_optional_compressed_and_single(blob):
    secs = _sections(blob)
    meta = [s for s in secs if s[0] == b"META"]
    assert len(meta) == 1 and meta[0][2] == 0  # optional: a 1.0 reader skips it
    assert b'"meta"' not in secs[0][1]
    manifest = json.loads(secs[0][1])
    legacy = [s for s in _sections(as_version(blob, (1, 0))) if s[0] != b"META"]  # 1.0: meta in the manifest
    legacy[0] = (b"MANI", json.dumps({**manifest, "meta": {"m": 1}}).encode(), 1)
    assert read_evx(ct._assemble(legacy, version=(1, 0))).meta == {"m": 1}
    both = [legacy[0]] + secs[1:]
    with pytest.raises(EvxFormatError, match="meta is given twice"):
        read_evx(ct._assemble(both))
    with pytest.raises(EvxFormatError, match="at most one meta section"):
        read_evx(ct._assemble(secs + meta))
    assert not any(s[0] == b"META" for s in _sections(encode_evx(_model(), [], {})))
    big = {"pipeline": [{"pass": "directed-evolution", "params": {f"p{i}": i * 0.5 for i in range(200)}}]}
    plain = len(json.dumps(big, sort_keys=True))
    assert len(encode_evx(_model(), [], big)) - len(encode_evx(_model(), [], {})) < plain / 2


def test_spliced_or_missing_sections(blob):
    secs = _sections(blob)
    with pytest.raises(EvxFormatError, match="manifest lists 2 tensors"):
        read_evx(ct._assemble(secs[:-1]))
    with pytest.raises(EvxFormatError, match="manifest lists 2 tensors"):
        read_evx(ct._assemble(secs + [secs[-1]]))
    with pytest.raises(EvxFormatError, match="expected one graph"):
        read_evx(ct._assemble([s for s in secs if s[0] != b"GRPH"]))
    rng = np.random.default_rng(9)
    other = encode_evx(_model(), [_make(rng, "uniform", "float32", (30, 40), 0.2, name=f"w{i}") for i in range(2)],
                       {"m": 1})
    _, mine = ct._parse_frame(blob)
    _, theirs = ct._parse_frame(other)
    spliced = bytearray(blob)  # bytes of another file's record pasted over ours
    n = min(mine[3].length, theirs[3].length)
    spliced[mine[3].offset:mine[3].offset + n] = other[theirs[3].offset:theirs[3].offset + n]
    with pytest.raises(EvxFormatError, match="section 3 \\(tensor record\\): checksum mismatch"):
        read_evx(bytes(spliced))
    cut = blob[:mine[3].offset] + other[theirs[3].offset:]  # head of one file, tail of another
    with pytest.raises(EvxFormatError):
        read_evx(cut)


def _container_with_record(record_bytes, count=1):
    secs = _sections(encode_evx(_model(), [], {}))
    secs[0] = (b"MANI", secs[0][1].replace(b'"tensor_count": 0', f'"tensor_count": {count}'.encode()), 1)
    return ct._assemble(secs + [(b"TENS", record_bytes, 1)] * count)


def test_absurd_sizes_are_refused_before_allocating():
    t = QuantizedTensor.raw("w", np.zeros((4, 4), np.float32), mask=np.zeros((4, 4), bool))
    rec = encode_record(t)
    dims_at = 1 + 1 + 1 + 1  # name_len, name "w", elem_type, rank; then two one-byte varint dims (4, 4)

    def with_dims(*dims):
        return _container_with_record(rec[:dims_at] + encode_varints(np.array(dims, np.uint64)) + rec[dims_at + 2:])

    tracemalloc.start()
    with pytest.raises(EvxFormatError, match="over the limit"):
        read_evx(with_dims(1 << 20, 1 << 19))  # 2^39 float32 = 2 TiB, n_kept 0
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 16 << 20
    with pytest.raises(EvxFormatError, match="exceeds 2\\^40"):
        read_evx(with_dims(1 << 41, 0))
    with pytest.raises(EvxFormatError, match="over the limit"):
        read_evx(with_dims(1 << 12, 1 << 12), max_output_bytes=1 << 20)  # 64 MiB: under the default floor


def test_record_level_errors_name_the_tensor():
    codes = np.minimum(np.random.default_rng(0).geometric(0.4, 4096) - 1, 15)
    t = QuantizedTensor.uniform("layer.weight", (64, 64), "float32", 4, codes, 0.1, 8.0)
    rec = bytearray(encode_record(t))
    rec[-2] ^= 0x55  # inside the last rANS word
    with pytest.raises(EvxFormatError, match="layer.weight.*corrupt entropy-coded stream"):
        read_evx(_container_with_record(bytes(rec)))
    with pytest.raises(EvxFormatError, match="two tensor records share a name"):
        read_evx(_container_with_record(encode_record(t), count=2))
    with pytest.raises(EvxFormatError, match="layer.weight.*value stream word count"):  # it runs to the end
        read_evx(_container_with_record(encode_record(t)[:-5]))
    with pytest.raises(EvxFormatError, match="trailing"):
        read_evx(_container_with_record(encode_record(t) + b"\x00"))


def test_graph_section_errors():
    secs = _sections(encode_evx(_model(), [], {}))
    bad = [(k, v if k != b"GRPH" else struct.pack("<Q", 10) + b"not zstd", f) for k, v, f in secs]
    with pytest.raises(EvxFormatError, match="graph section"):
        read_evx(ct._assemble(bad))
    from evonnx.formats.symbols import zstd_compress
    junk = b"\xff" * 32
    bad = [(k, v if k != b"GRPH" else struct.pack("<Q", len(junk)) + zstd_compress(junk), f) for k, v, f in secs]
    with pytest.raises(EvxFormatError, match="not an ONNX model"):
        read_evx(ct._assemble(bad))
    bad = [(k, v if k != b"MANI" else b"[1, 2]", f) for k, v, f in secs]
    with pytest.raises(EvxFormatError, match="manifest"):
        read_evx(ct._assemble(bad))


def test_graph_with_weights_is_kept_lossless():
    init = numpy_helper.from_array(np.random.default_rng(0).normal(size=(50,)).astype(np.float32), "bias")
    m = _model([init])
    c = read_evx(encode_evx(m, [QuantizedTensor.raw("w", np.ones(3, np.float32))]))
    assert c.graph == m
    assert c.stats.graph_bytes == len(m.SerializeToString())
    assert isinstance(c.graph, onnx.ModelProto)

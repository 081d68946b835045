"""An independent .evx decoder written from formats/SPEC.md alone, checked against the library.

Plain Python and numpy (per-symbol loops are fine at these sizes); it uses no evonnx.formats code and
no constriction, so agreement means the specification is complete and the library follows it.
"""
from __future__ import annotations

import json
import math
import struct
import zlib

import numpy as np
import onnx
import pytest
import zstandard
from onnx import helper

from evonnx.formats import QuantizedTensor, dequantize, encode_evx, read_evx
from legacy import as_version


# ---------------------------------------------------------------------------------------------------
# reference decoder (SPEC.md)
class R:
    def __init__(self, b: bytes, pos: int = 0, end: int | None = None):
        self.b, self.pos, self.end = b, pos, len(b) if end is None else end

    def take(self, n):
        assert self.pos + n <= self.end, "truncated"
        out = self.b[self.pos:self.pos + n]
        self.pos += n
        return out

    def u(self, n):
        return int.from_bytes(self.take(n), "little")

    def varint(self):
        v = shift = 0
        while True:
            byte = self.u(1)
            v |= (byte & 0x7F) << shift
            shift += 7
            if byte < 0x80:
                return v

    def f32s(self, n):
        return [struct.unpack("<f", self.take(4))[0] for _ in range(n)]


class Rans:
    """SPEC section 7."""

    def __init__(self, words):
        self.w = list(words)
        self.state = 0
        if self.w:
            x = self.w.pop()
            assert x != 0
            self.state = x
            if self.w:
                self.state = (self.state << 32) | self.w.pop()

    def symbol(self, F):
        q = self.state & ((1 << 24) - 1)
        c = 0
        for s, f in enumerate(F):
            if c <= q < c + f:
                break
            c += f
        self.state = (self.state >> 24) * f + (q - c)
        if self.state < (1 << 32) and self.w:
            self.state = (self.state << 32) | self.w.pop()
        return s

    def finish(self):
        assert self.state == 0 and not self.w


def words(r: R):
    n = r.varint()
    return [r.u(4) for _ in range(n)]


def nibble_table(p16):
    q = (65536 - p16, p16)
    f = [max(1, (q[s & 1] * q[s >> 1 & 1] * q[s >> 2 & 1] * q[s >> 3 & 1]) >> 40) for s in range(16)]
    m = f.index(max(f))
    f[m] += (1 << 24) - sum(f)
    return f


def bit_run(dec, p16, count):
    """SPEC 5.4."""
    out = []
    for _ in range(-(-count // 4)):
        s = dec.symbol(nibble_table(p16))
        out += [(s >> j) & 1 for j in range(4)]
    assert not any(out[count:])
    return out[:count]


def symbol_stream(r: R, n: int, amax: int, grid=None):
    """SPEC section 6; grid = (rows, cols, kept positions as (r, c) list) for ANS_GRID."""
    codec = r.u(1)
    if codec == 0:
        assert n == 0
        return []
    if codec == 1:
        v = r.varint()
        assert v < amax
        return [v] * n
    if codec == 2:
        w = r.u(1)
        data = r.take(math.ceil(n * w / 8))
        bits = int.from_bytes(data, "little")
        out = [(bits >> (i * w)) & ((1 << w) - 1) for i in range(n)]
        assert all(v < amax for v in out)
        return out
    if codec == 3:
        a = r.varint()
        p = r.u(1)
        f = [r.varint() << (24 - p) for _ in range(a)]
        assert sum(f) == 1 << 24
        dec = Rans(words(r))
        out = [dec.symbol(f) for _ in range(n)]
        dec.finish()
        return out
    if codec == 4:
        rows, cols, kept = grid
        kr, kc = r.u(1), r.u(1)
        a = r.varint()
        rc = symbol_stream(r, rows, kr)
        cc = symbol_stream(r, cols, kc)
        ctx = [rc[i] * kc + cc[j] for i, j in kept]
        tables = []
        for k in range(kr * kc):
            p = r.u(1)
            tables.append(None if p == 0 else [r.varint() << (24 - p) for _ in range(a)])
        dec = Rans(words(r))
        out = [None] * n
        for k in range(kr * kc):
            for i in [i for i in range(n) if ctx[i] == k]:
                out[i] = dec.symbol(tables[k])
        dec.finish()
        return out
    if codec == 5:
        b = r.u(1)
        length = r.varint()
        raw = zstandard.ZstdDecompressor().decompress(r.take(length))
        assert len(raw) == n * b
        return [int.from_bytes(bytes(raw[j * n + i] for j in range(b)), "little") for i in range(n)]
    raise AssertionError(f"codec {codec}")


def mask_stream(r: R, size: int, rows: int, cols: int, n_kept: int):
    """SPEC section 5: returns a list of 0/1 (C order) or None for ALL."""
    codec = r.u(1)
    if codec == 0:
        return None
    if codec == 1:
        return [0] * size
    if codec == 2:
        data = r.take(math.ceil(size / 8))
        return [(data[i >> 3] >> (i & 7)) & 1 for i in range(size)]
    if codec == 3:
        polarity = r.u(1)
        e = r.varint()
        m = r.varint()
        syms = symbol_stream(r, m, e + 1)
        out = [1 - polarity] * size
        acc, prev = 0, -1
        for s in syms:
            if s == e:
                acc += e
            else:
                prev += acc + s + 1
                out[prev] = polarity
                acc = 0
        return out
    if codec == 4:
        p16 = [r.u(2) for _ in range(43)]
        dec = Rans(words(r))
        M = [[0] * cols for _ in range(rows)]

        def code(group):  # group: list of (ctx, (row, col)) in group order
            ordered = sorted(group, key=lambda g: g[0])  # stable sort by context
            for ctx in sorted({c for c, _ in ordered}):
                cells = [pos for c, pos in ordered if c == ctx]
                for (i, j), bit in zip(cells, bit_run(dec, p16[ctx], len(cells))):
                    M[i][j] = bit

        code([(0, (0, 0))])
        L = 0
        while (1 << L) < max(rows, cols):
            L += 1
        for lvl in range(L - 1, -1, -1):
            s = 1 << lvl
            rq, cq = -(-rows // s), -(-cols // s)

            def Q(i, j):
                return M[i * s][j * s] if 0 <= i < rq and 0 <= j < cq else 0

            base = 1 + 14 * (0 if s == 1 else 1 if s == 2 else 2)
            group = [(base + Q(i - 1, j - 1) + Q(i - 1, j + 1) + Q(i + 1, j - 1) + Q(i + 1, j + 1), (i * s, j * s))
                     for i in range(1, rq, 2) for j in range(1, cq, 2)]
            code(group)
            pos = [(i, j) for i in range(0, rq, 2) for j in range(1, cq, 2)]
            pos += [(i, j) for i in range(1, rq, 2) for j in range(0, cq, 2)]
            code([(base + 5 + 3 * (Q(i - 1, j) + Q(i + 1, j)) + Q(i, j - 1) + Q(i, j + 1), (i * s, j * s))
                  for i, j in pos])
        dec.finish()
        return [v for row in M for v in row]
    if codec == 5:
        kr, kc = r.u(1), r.u(1)
        rc = symbol_stream(r, rows, kr)
        cc = symbol_stream(r, cols, kc)
        p16 = [r.u(2) for _ in range(kr * kc)]
        dec = Rans(words(r))
        out = [0] * size
        for k in range(kr * kc):
            cells = [i * cols + j for i in range(rows) for j in range(cols) if rc[i] * kc + cc[j] == k]
            for cell, bit in zip(cells, bit_run(dec, p16[k], len(cells))):
                out[cell] = bit
        dec.finish()
        return out
    raise AssertionError(f"mask codec {codec}")


DTYPES = {1: np.float32, 10: np.float16, 11: np.float64,
          16: helper.tensor_dtype_to_np_dtype(onnx.TensorProto.BFLOAT16), 3: np.int8, 2: np.uint8}
ITEMSIZE = {1: 4, 10: 2, 11: 8, 16: 2, 3: 1, 2: 1}


def tensor_record(b: bytes, major: int):
    """SPEC section 4: (name, dense weight as numpy array), in the record layout of `major`."""
    r = R(b)
    short, count = (lambda: r.u(2), lambda: r.u(8)) if major == 1 else (r.varint, r.varint)
    name = r.take(short()).decode()
    elem = r.u(1)
    dims = [count() for _ in range(r.u(1))]
    size = math.prod(dims)
    scheme, bits, n_kept = r.u(1), r.u(1), count()
    params = {}
    if scheme == 1:
        flags, axis, block = r.u(1), r.u(1), count()
        gran, coded = flags & 0x7F, major >= 2 and flags & 0x80
        shape = [] if gran == 0 else [dims[axis]] if gran == 1 else [
            -(-d // block) if i == axis else d for i, d in enumerate(dims)]
        n = math.prod(shape)
        if coded:  # two streams of binary32 bit patterns
            scale, zp = (struct.unpack(f"<{n}f", struct.pack(f"<{n}I", *symbol_stream(r, n, 1 << 32)))
                         for _ in range(2))
        else:
            scale, zp = r.f32s(n), r.f32s(n)
        params = dict(gran=gran, axis=axis, block=block, pshape=shape, scale=scale, zp=zp)
    elif scheme == 2:
        params["centroids"] = r.f32s(short())
    mask_len = count()
    rows = dims[0] if dims and dims[0] > 0 else 1
    cols = size // rows
    mr = R(b, r.pos, r.pos + mask_len)
    mask = mask_stream(mr, size, rows, cols, n_kept) if size or mask_len else None
    assert mr.pos == mr.end
    r.pos += mask_len
    kept = list(range(size)) if mask is None else [i for i, v in enumerate(mask) if v]
    assert len(kept) == n_kept
    value_len = r.u(8) if major == 1 else len(b) - r.pos
    vr = R(b, r.pos, r.pos + value_len)
    itemsize = ITEMSIZE[elem]
    amax = 1 << (8 * itemsize) if scheme == 0 else len(params["centroids"]) if scheme == 2 else 1 << bits
    grid = (rows, cols, [divmod(k, cols) for k in kept]) if size else None
    q = symbol_stream(vr, n_kept, amax, grid)
    assert vr.pos == vr.end and vr.end == len(b)
    out = np.zeros(size, np.uint64 if scheme == 0 else np.float32)
    for i, k in enumerate(kept):
        if scheme == 0:
            out[k] = q[i]
        elif scheme == 2:
            out[k] = np.float32(params["centroids"][q[i]])
        else:
            idx = np.unravel_index(k, dims) if dims else ()
            if params["gran"] == 0:
                g = 0
            elif params["gran"] == 1:
                g = idx[params["axis"]]
            else:
                pidx = list(idx)
                pidx[params["axis"]] //= params["block"]
                g = int(np.ravel_multi_index(pidx, params["pshape"]))
            out[k] = (np.float32(q[i]) - np.float32(params["zp"][g])) * np.float32(params["scale"][g])
    if scheme == 0:
        pattern = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}[itemsize]
        return name, out.astype(pattern).view(DTYPES[elem]).reshape(dims)
    return name, out.astype(DTYPES[elem]).reshape(dims)


def reference_decode(data: bytes):
    """SPEC section 1-3: (ModelProto, meta, {name: array})."""
    assert data[:8] == b"\x89EVX\r\n\x1a\n"
    major, minor, count, file_size, _flags, header_crc = struct.unpack_from("<HHIQII", data, 8)
    assert major in (1, 2) and file_size == len(data)
    entry = 32 if major == 1 else 20
    table = data[32:32 + entry * count]
    assert zlib.crc32(data[:28] + table) == header_crc
    assert data[file_size - 16:file_size - 8] == b"EVXEND\x00\x00"
    assert zlib.crc32(data[:file_size - 4]) == struct.unpack_from("<I", data, file_size - 4)[0]
    graph = meta = None
    tensors = {}
    end = 32 + entry * count
    for i in range(count):
        if major == 1:
            kind, flags, offset, length, crc, _ = struct.unpack_from("<4sIQQII", table, 32 * i)
            assert offset % 64 == 0 and offset >= end
        else:
            (kind, flags, length, crc), offset = struct.unpack_from("<4sIQI", table, 20 * i), end
        body = data[offset:offset + length]
        assert zlib.crc32(body) == crc
        end = offset + length
        if kind == b"MANI":
            meta = json.loads(body.decode()).get("meta", meta)
        elif kind == b"META":
            size = struct.unpack_from("<Q", body)[0]
            raw = zstandard.ZstdDecompressor().decompress(body[8:])
            assert len(raw) == size
            meta = json.loads(raw.decode())
        elif kind == b"GRPH":
            size = struct.unpack_from("<Q", body)[0]
            raw = zstandard.ZstdDecompressor().decompress(body[8:])
            assert len(raw) == size
            graph = onnx.ModelProto()
            graph.ParseFromString(raw)
        elif kind == b"TENS":
            name, arr = tensor_record(body, major)
            tensors[name] = arr
        else:
            assert not flags & 1
    assert major == 1 or end == file_size - 16
    return graph, meta, tensors


# ---------------------------------------------------------------------------------------------------
def _graph():
    return helper.make_model(helper.make_graph([], "g", [], []))


def _smooth_mask(rng, shape, keep, passes=3):
    x = rng.normal(size=shape)
    for _ in range(passes):
        for axis in (0, 1):
            x = (x + np.roll(x, 1, axis) + np.roll(x, -1, axis)) / 3
    return x > np.quantile(x, 1 - keep)


def _records(rng):
    ts = []
    shape = (24, 40)
    rs = np.exp(rng.normal(0, 0.8, (shape[0], 1)))
    cs = np.exp(rng.normal(0, 0.8, (1, shape[1])))
    w = rng.normal(size=shape) * rs * cs
    mask = np.abs(w) > np.quantile(np.abs(w), 0.8)
    ts.append(QuantizedTensor.uniform("magnitude", shape, "float32", 4, rng.integers(0, 16, mask.sum()),
                                      np.float32(0.02), np.float32(7.5), mask=mask))
    m = _smooth_mask(rng, (96, 80), 0.3)
    ts.append(QuantizedTensor.codebook("blob", (96, 80), "float16", 3, rng.integers(0, 5, m.sum()),
                                       rng.normal(size=5), mask=m))
    ts.append(QuantizedTensor.uniform("perchan", (6, 4, 3, 3), "float64", 6, rng.integers(0, 64, 216),
                                      rng.random(4) + 0.1, rng.integers(0, 64, 4), axis=1))
    ts.append(QuantizedTensor.uniform("blocked", (8, 20), "float32", 2, rng.integers(0, 4, 160),
                                      rng.random((8, 3)) + 0.1, np.full((8, 3), 1.5), axis=1, block_size=8))
    ts.append(QuantizedTensor.raw("raw", rng.normal(size=(20, 30)).astype(np.float16).astype(np.float32),
                                  mask=rng.random((20, 30)) < 0.4))
    ts.append(QuantizedTensor.raw("scalar", np.float16(-0.0)))
    ts.append(QuantizedTensor.raw("empty", np.zeros((0, 3), np.float32)))
    # already-quantized integers (2.1): lossless; ANS beats zstd at this size
    ts.append(QuantizedTensor.raw("int8", np.clip(np.rint(rng.laplace(0, 1.5, (128, 384))), -127, 127).astype(np.int8)))
    ts.append(QuantizedTensor.raw("uint8", rng.integers(0, 256, (7, 9)).astype(np.uint8)))
    m = rng.random((5, 300)) < 0.02
    ts.append(QuantizedTensor.uniform("runs", (5, 300), "float32", 1, rng.integers(0, 2, m.sum()),
                                      np.float32(0.5), np.float32(0.5), mask=m))
    # many channels, rounded scales and one zero point: coded parameters (2.2)
    scales = rng.random(300).astype(np.float32).view(np.uint32) & np.uint32(0xFFFF0000)
    ts.append(QuantizedTensor.uniform("rows", (300, 6), "float32", 3, rng.integers(0, 8, 1800),
                                      scales.view(np.float32) + np.float32(0.5), np.full(300, 3.5), axis=0))
    # dense, column-heteroscedastic codes so ANS_GRID gets chosen
    q = np.clip(np.rint(rng.normal(size=(40, 64)) * np.exp(rng.normal(0, 1, (1, 64))) + 8), 0, 15)
    ts.append(QuantizedTensor.uniform("ctxvals", (40, 64), "float32", 4, q.astype(int).reshape(-1),
                                      np.float32(0.1), np.float32(8.0)))
    return ts


def test_reference_decoder_agrees_with_library():
    rng = np.random.default_rng(11)
    ts = _records(rng)
    data = encode_evx(_graph(), ts, {"k": [1, 2]})
    assert read_evx(data).version == (2, 2)  # the "rows" record's parameters are coded
    codecs = {(s.mask_codec, s.value_codec) for s in read_evx(data).stats.tensors}
    seen = {c for pair in codecs for c in pair}
    want = {"runs", "pyramid", "grid", "ans", "ans-grid", "packed", "const", "empty", "zstd-planes"}
    assert want <= seen, seen
    graph, meta, tensors = reference_decode(data)
    assert meta == {"k": [1, 2]}
    assert graph == _graph()
    old = reference_decode(as_version(data, (1, 1)))  # the same tensors in a 1.1 file
    assert old[1] == meta and old[0] == graph and all(old[2][n].tobytes() == a.tobytes() for n, a in tensors.items())
    for t in ts:
        ref = tensors[t.name]
        got = dequantize(t)
        assert ref.dtype == got.dtype and ref.shape == got.shape
        assert ref.tobytes() == got.tobytes(), t.name


@pytest.mark.parametrize("seed", [1, 2])
def test_reference_decoder_on_random_records(seed):
    """Random small uniform records (every bit width, sparsity and dtype) decode the same both ways."""
    rng = np.random.default_rng(seed)
    ts = []
    for i, dtype in enumerate(["float32", "float16", "bfloat16", "float64"] * 2):
        shape = tuple(int(d) for d in rng.integers(1, 12, size=rng.integers(1, 4)))
        keep = rng.random(shape) < rng.choice([0.0, 0.05, 0.5, 0.95, 1.0])
        bits = int(rng.integers(1, 9))
        ts.append(QuantizedTensor.uniform(f"t{i}", shape, dtype, bits, rng.integers(0, 2 ** bits, keep.sum()),
                                          np.float32(rng.random() + 0.01), np.float32(rng.integers(0, 2 ** bits)),
                                          mask=keep))
    data = encode_evx(_graph(), ts, {})
    _, _, tensors = reference_decode(data)
    for t in ts:
        assert tensors[t.name].tobytes() == dequantize(t).tobytes()


WITHOUT_CONSTRICTION = r"""
import sys
sys.modules["constriction"] = None  # as on Linux ARM, where it has no wheel
import numpy as np
from evonnx.formats import ans, dequantize, encode_evx, read_evx, rans
assert ans.Decoder is rans.Decoder
data = open(sys.argv[1], "rb").read()
box = read_evx(data)
assert encode_evx(box.graph, box.tensors, box.meta) == data, "different bytes without constriction"
np.savez(sys.argv[2], **{t.name: dequantize(t) for t in box.tensors})
"""


def test_plain_python_coder_reads_and_writes_the_same_files(tmp_path):
    """Without constriction (formats/rans.py stands in) a file decodes to the same tensors and re-encodes to
    the same bytes, over every codec."""
    import subprocess
    import sys
    records = _records(np.random.default_rng(11))
    (tmp_path / "a.evx").write_bytes(encode_evx(_graph(), records, {"k": 1}))
    out = subprocess.run([sys.executable, "-c", WITHOUT_CONSTRICTION, str(tmp_path / "a.evx"),
                          str(tmp_path / "t.npz")], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    with np.load(tmp_path / "t.npz") as got:
        for t in records:
            assert got[t.name].tobytes() == dequantize(t).tobytes(), t.name


@pytest.mark.parametrize("seed", [0, 1])
def test_plain_python_coder_matches_constriction_word_for_word(seed):
    from evonnx.formats import ans, rans
    rng = np.random.default_rng(seed)
    for _ in range(100):
        runs = []
        for _ in range(int(rng.integers(0, 4))):
            a = int(rng.integers(2, 40))
            p = rng.dirichlet(np.full(a, rng.uniform(0.05, 3)))
            precision = int(rng.integers(math.ceil(math.log2(a)) + 1, 25))
            runs.append((rng.choice(a, size=int(rng.integers(0, 300)), p=p).astype(np.int32),
                         ans.scaled(ans.quantize_counts(p * 1000, precision), precision)))
        words = ans.encode(runs)  # constriction
        assert np.array_equal(rans.encode(runs), words)
        dec = rans.Decoder(words, "stream")
        for symbols, freqs in runs:
            assert np.array_equal(dec.decode(freqs, len(symbols)), symbols)
        dec.finish()
    with pytest.raises(Exception, match="last word is zero"):
        rans.Decoder(np.array([7, 0], np.uint32), "stream")

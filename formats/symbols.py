"""Symbol streams: a sequence of n integers (n known to the reader) in one of six self-delimiting codecs.

EMPTY (n == 0), CONST (all equal), PACKED (fixed width, LSB first), ANS (one static model),
ANS_GRID (context modelling: one model per (row class, column class) of the tensor's 2-D view)
and ZSTD_PLANES (byte planes + zstd, for raw bit patterns). The encoder writes every candidate that
applies and keeps the shortest; SPEC.md gives each layout.
"""
from __future__ import annotations

import numpy as np
import zstandard

from evonnx.errors import EvxFormatError
from evonnx.formats import ans
from evonnx.formats.bytesio import Reader, Writer
from evonnx.formats.contexts import MAX_CLASSES, ClassGrid, KeptGrid, rank_classes, tile_counts

EMPTY, CONST, PACKED, ANS, ANS_GRID, ZSTD_PLANES = range(6)
CODEC_NAMES = {EMPTY: "empty", CONST: "const", PACKED: "packed", ANS: "ans", ANS_GRID: "ans-grid",
               ZSTD_PLANES: "zstd-planes"}

_CHUNK = 1 << 20  # symbols per packing chunk (a multiple of 8 keeps chunks byte aligned)


# -- PACKED ---------------------------------------------------------------------------------------
def pack(values: np.ndarray, width: int) -> bytes:
    """Fixed-width little-endian bit packing (value i occupies bits [i*width, (i+1)*width)), _CHUNK values at a
    time (as 8-byte integers)."""
    flat = np.asarray(values).reshape(-1)
    shifts = np.arange(width, dtype=np.uint64)
    parts = []
    for start in range(0, flat.size, _CHUNK):
        v = flat[start:start + _CHUNK].astype("<u8")
        if width % 8 == 0:
            parts.append(v.view(np.uint8).reshape(-1, 8)[:, :width // 8].tobytes())
            continue
        bits = ((v[:, None] >> shifts) & np.uint64(1)).astype(np.uint8)
        parts.append(np.packbits(bits.reshape(-1), bitorder="little").tobytes())
    return b"".join(parts)


def unpack(data, n: int, width: int, dtype) -> np.ndarray:
    """Inverse of `pack` into `dtype` (the caller checked len(data) == ceil(n*width/8))."""
    raw = np.frombuffer(data, dtype=np.uint8)
    dt = np.dtype(dtype)
    if width % 8 == 0:
        nb = width // 8
        wide = np.zeros((n, 8), np.uint8)
        wide[:, :nb] = raw.reshape(n, nb)
        return wide.view("<u8").reshape(n).astype(dt)
    out = np.empty(n, dt)
    weights = (np.uint64(1) << np.arange(width, dtype=np.uint64))
    for start in range(0, n, _CHUNK):
        stop = min(n, start + _CHUNK)
        lo, hi = start * width // 8, -(-stop * width // 8)
        bits = np.unpackbits(raw[lo:hi], bitorder="little")[:(stop - start) * width].reshape(-1, width)
        if width <= 8:
            out[start:stop] = np.packbits(bits, axis=1, bitorder="little")[:, 0]
        else:
            out[start:stop] = bits.astype(np.uint64) @ weights
    return out


# -- ZSTD_PLANES ----------------------------------------------------------------------------------
LOSSLESS_ZSTD_LEVEL = 19  # integer records: zstd at its strongest usual level, the baseline our coder must beat


def zstd_level(nbytes: int) -> int:
    return 19 if nbytes <= 1 << 20 else 12 if nbytes <= 1 << 24 else 6


def zstd_compress(data: bytes, level: int | None = None) -> bytes:
    """One zstd frame declaring its content size; `level` None picks one by size (faster for large data)."""
    return zstandard.ZstdCompressor(level=zstd_level(len(data)) if level is None else level,
                                    write_content_size=True, write_checksum=True).compress(data)


def zstd_decompress(frame, size: int, what: str) -> bytes:
    """Decompress one frame that must declare exactly `size` bytes (checked before allocating)."""
    frame = bytes(frame)
    try:
        declared = zstandard.frame_content_size(frame)
    except zstandard.ZstdError:
        raise EvxFormatError(f"{what}: not a zstd frame") from None
    if declared != size:
        raise EvxFormatError(f"{what}: zstd frame declares {declared} bytes, expected {size}")
    try:
        out = zstandard.ZstdDecompressor().decompress(frame)
    except zstandard.ZstdError as exc:
        raise EvxFormatError(f"{what}: corrupt zstd frame ({exc})") from None
    if len(out) != size:
        raise EvxFormatError(f"{what}: zstd frame gave {len(out)} bytes, expected {size}")
    return out


def _planes_encode(values: np.ndarray, itemsize: int, level: int | None) -> bytes:
    planes = np.ascontiguousarray(values).view(np.uint8).reshape(-1, itemsize).T
    return zstd_compress(np.ascontiguousarray(planes).tobytes(), level)


def _planes_decode(frame, n: int, itemsize: int, what: str) -> np.ndarray:
    flat = np.frombuffer(zstd_decompress(frame, n * itemsize, what), dtype=np.uint8)
    return np.ascontiguousarray(flat.reshape(itemsize, n).T).view(f"<u{itemsize}").reshape(n)


# -- ANS_GRID: contexts from row / column classes ---------------------------------------------------
def _narrow(alphabet: int) -> type:
    """The smallest unsigned dtype holding symbols below `alphabet` (a large tensor's codes stay 1 byte each)."""
    return np.uint8 if alphabet <= 1 << 8 else np.uint16 if alphabet <= 1 << 16 else np.int64


def _counts(values: np.ndarray, minlength: int) -> np.ndarray:
    """np.bincount of non-negative integers, _CHUNK at a time (bincount converts its input to 8-byte integers)."""
    flat = values.reshape(-1)
    return sum((np.bincount(flat[i:i + _CHUNK], minlength=minlength) for i in range(0, flat.size, _CHUNK)),
               np.zeros(minlength, np.int64))


def _row_blocks(grid: KeptGrid):
    """Slices of the view's rows, about _CHUNK entries each."""
    step = max(1, _CHUNK // max(grid.cols, 1))
    return [slice(r, r + step) for r in range(0, grid.rows, step)]


def _spread_score(grid: KeptGrid, q: np.ndarray, alphabet: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean distance of the codes from the most common code, per row and per column of the view (integer sums,
    a block of rows at a time)."""
    centre = int(np.argmax(_counts(q if grid.mask is None else q[grid.mask], alphabet)))
    rows, cols = np.zeros(grid.rows, np.int64), np.zeros(grid.cols, np.int64)
    for block in _row_blocks(grid):
        dev = np.abs(q[block].astype(np.int64) - centre)
        if grid.mask is not None:
            dev *= grid.mask[block]
        rows[block] = dev.sum(1)
        cols += dev.sum(0)
    kept_rows, kept_cols = ((grid.cols, grid.rows) if grid.mask is None else (grid.mask.sum(1), grid.mask.sum(0)))
    return rows / np.maximum(kept_rows, 1), cols / np.maximum(kept_cols, 1)


def _grid_candidates(grid: KeptGrid, q: np.ndarray, alphabet: int):
    """The (estimated bits, ClassGrid) of the cheapest row x column class split, or None."""
    row_score, col_score = _spread_score(grid, q, alphabet)
    best = None
    for kr, kc in ((4, 1), (1, 4), (4, 4), (8, 8)):
        if kr > grid.rows or kc > grid.cols:
            continue
        cg = ClassGrid(rank_classes(row_score, kr), rank_classes(col_score, kc), kr, kc)
        hist = np.zeros(kr * kc * alphabet, np.int64)
        for block in _row_blocks(grid):
            key = (cg.rc[block, None] * kc + cg.cc[None, :]) * alphabet + q[block]
            hist += np.bincount(key.reshape(-1) if grid.mask is None else key[grid.mask[block]],
                                minlength=hist.size)
        hist = hist.reshape(kr * kc, alphabet)
        tot = hist.sum(1, keepdims=True)
        with np.errstate(divide="ignore", invalid="ignore"):
            bits = np.where(hist > 0, hist * np.log2(tot / hist), 0).sum()
        bits += grid.rows * np.log2(kr) + grid.cols * np.log2(kc) + 8 * 1.5 * alphabet * int((tot > 0).sum())
        if best is None or bits < best[0]:
            best = (bits, cg)
    return best


def _tile_counts(grid: KeptGrid, cg: ClassGrid) -> tuple[np.ndarray | None, np.ndarray]:
    """The permuted mask (None when dense) and the number of kept entries in each context's tile."""
    if grid.mask is None:
        return None, np.outer(np.diff(cg.rb), np.diff(cg.cb)).reshape(-1)
    mp = cg.permute(grid.mask)
    return mp, tile_counts(mp, cg)


def _encode_ans_grid(sym: np.ndarray, alphabet: int, grid: KeptGrid) -> bytes | None:
    q = grid.scatter(sym, _narrow(alphabet))
    best = _grid_candidates(grid, q, alphabet)
    if best is None:
        return None
    cg = best[1]
    mp, _ = _tile_counts(grid, cg)
    qp = cg.permute(q)
    runs_vals = [qp[rs, cs].reshape(-1) if mp is None else qp[rs, cs][mp[rs, cs]] for _, rs, cs in cg.tiles()]
    w = Writer().u8(ANS_GRID).u8(cg.kr).u8(cg.kc).varint(alphabet)
    w.raw(encode(cg.rc, cg.kr)).raw(encode(cg.cc, cg.kc))
    runs = []
    for vals in runs_vals:
        if vals.size == 0:
            w.u8(0)
            continue
        p, f = ans.best_table(_counts(vals, alphabet))
        ans.write_table(w, p, f)
        runs.append((vals, ans.scaled(f, p)))
    ans.write_words(w, ans.encode(runs))
    return w.bytes()


def _decode_ans_grid(r: Reader, n: int, limit: int, grid: KeptGrid | None, dtype, what: str) -> np.ndarray:
    if grid is None:
        raise r.fail(f"{what}: context-coded stream where none is allowed")
    kr, kc = r.u8(f"{what} row classes"), r.u8(f"{what} column classes")
    if not (1 <= kr <= MAX_CLASSES and 1 <= kc <= MAX_CLASSES):
        raise r.fail(f"{what}: class counts {kr} x {kc} outside 1..{MAX_CLASSES}")
    alphabet = _read_alphabet(r, limit, what)
    rc = decode(r, grid.rows, kr, np.int64, what=f"{what} row classes")
    cc = decode(r, grid.cols, kc, np.int64, what=f"{what} column classes")
    cg = ClassGrid(rc, cc, kr, kc)
    sparse = grid.mask is not None and 4 * n < grid.mask.size  # sorting the few kept entries beats tiles
    if sparse:
        kept_ctx = (rc.astype(np.uint8)[:, None] * np.uint8(kc) + cc.astype(np.uint8)[None, :])[grid.mask]
        counts = np.bincount(kept_ctx, minlength=kr * kc)
    else:
        mp, counts = _tile_counts(grid, cg)
    if int(counts.sum()) != n:
        raise r.fail(f"{what}: contexts hold {int(counts.sum())} symbols, expected {n}")
    tables = []
    for ctx in range(kr * kc):
        precision = r.u8(f"{what} context {ctx} table precision")
        if precision == 0:
            if counts[ctx]:
                raise r.fail(f"{what}: context {ctx} has {counts[ctx]} symbols but no table")
            tables.append(None)
        else:
            tables.append(ans.read_table(r, alphabet, f"{what} context {ctx} table", precision))
    dec = ans.Decoder(ans.read_words(r, what), what)
    stream, start = np.empty(n, dtype), 0
    for ctx in range(kr * kc):
        _decode_into(dec, tables[ctx], stream[start:start + counts[ctx]])
        start += int(counts[ctx])
    dec.finish()
    if sparse:
        out = np.empty(n, dtype)
        out[np.argsort(kept_ctx, kind="stable")] = stream
        return out
    qp = np.zeros((grid.rows, grid.cols), dtype)
    start = 0
    for ctx, rs, cs in cg.tiles():
        count = int(counts[ctx])
        if count:
            if mp is None:
                qp[rs, cs] = stream[start:start + count].reshape(rs.stop - rs.start, cs.stop - cs.start)
            else:
                qp[rs, cs][mp[rs, cs]] = stream[start:start + count]
            start += count
    q = cg.unpermute(qp)
    return q.reshape(-1) if grid.mask is None else q[grid.mask]


# -- entry points ---------------------------------------------------------------------------------
def _decode_into(dec, table: np.ndarray | None, out: np.ndarray) -> np.ndarray:
    """`out` filled with the next out.size symbols of one run, ans.CODER_CHUNK at a time."""
    for start in range(0, out.size, ans.CODER_CHUNK):
        out[start:start + ans.CODER_CHUNK] = dec.decode(table, min(ans.CODER_CHUNK, out.size - start))
    return out


def _read_alphabet(r: Reader, limit: int, what: str) -> int:
    a = r.varint(f"{what} alphabet size", min(limit, ans.MAX_ALPHABET))
    if a < 2:
        raise r.fail(f"{what}: alphabet size {a} < 2")
    return a


def _encode_ans(symbols: np.ndarray, alphabet: int) -> bytes:
    p, f = ans.best_table(_counts(symbols, alphabet))
    w = Writer().u8(ANS).varint(alphabet)
    ans.write_table(w, p, f)
    ans.write_words(w, ans.encode([(symbols, ans.scaled(f, p))]))
    return w.bytes()


def encode(symbols: np.ndarray, limit: int, *, grid: KeptGrid | None = None,
           itemsize: int | None = None, zstd_level: int | None = None) -> bytes:
    """Shortest stream for `symbols` (all < limit). `grid` (where the symbols sit) enables ANS_GRID;
    `itemsize` (raw bit patterns) enables ZSTD_PLANES, at `zstd_level` (None: by size)."""
    sym = np.asarray(symbols).ravel()
    n = sym.size
    if n == 0:
        return bytes([EMPTY])
    lo, hi = int(sym.min()), int(sym.max())
    if lo < 0 or hi >= limit:
        raise EvxFormatError(f"symbol {hi if hi >= limit else lo} outside the alphabet [0, {limit})")
    if lo == hi:
        return Writer().u8(CONST).varint(hi).bytes()
    width = hi.bit_length()
    candidates = [Writer().u8(PACKED).u8(width).raw(pack(sym, width)).bytes()]
    if itemsize is not None:
        frame = _planes_encode(sym, itemsize, zstd_level)
        candidates.append(Writer().u8(ZSTD_PLANES).u8(itemsize).varint(len(frame)).raw(frame).bytes())
    if hi < ans.MAX_ALPHABET:
        alphabet = hi + 1
        narrow = sym.astype(_narrow(alphabet), copy=False)
        candidates.append(_encode_ans(narrow, alphabet))
        if grid is not None and n >= 1024 and alphabet <= 256:
            ctx_coded = _encode_ans_grid(narrow, alphabet, grid)
            if ctx_coded is not None:
                candidates.append(ctx_coded)
    return min(candidates, key=len)  # ties keep the earlier (faster) codec


def decode(r: Reader, n: int, limit: int, dtype, *, grid: KeptGrid | None = None,
           what: str = "symbol stream") -> np.ndarray:
    """Read one stream of `n` symbols, each checked < limit, as `dtype`."""
    codec = r.u8(f"{what} codec")
    if codec == EMPTY:
        if n != 0:
            raise r.fail(f"{what}: empty stream for {n} symbols")
        return np.zeros(0, dtype)
    if n == 0:
        raise r.fail(f"{what}: codec {codec} for an empty stream")
    if codec == CONST:
        value = r.varint(f"{what} constant", limit - 1)
        return np.full(n, value, dtype)
    if codec == PACKED:
        width = r.u8(f"{what} width")
        if not 1 <= width <= 64 or width > max(1, (limit - 1).bit_length()):
            raise r.fail(f"{what}: bit width {width} does not fit the alphabet [0, {limit})")
        data = r.take(-(-n * width // 8), f"{what} packed bits")
        out = unpack(data, n, width, dtype)
        if width < 64 and (1 << width) > limit and n and int(out.max()) >= limit:
            raise r.fail(f"{what}: symbol outside the alphabet [0, {limit})")
        return out
    if codec == ANS:
        alphabet = _read_alphabet(r, limit, what)
        table = ans.read_table(r, alphabet, f"{what} table", r.u8(f"{what} table precision"))
        dec = ans.Decoder(ans.read_words(r, what), what)
        out = _decode_into(dec, table, np.empty(n, dtype))
        dec.finish()
        return out
    if codec == ANS_GRID:
        return _decode_ans_grid(r, n, limit, grid, dtype, what)
    if codec == ZSTD_PLANES:
        itemsize = r.u8(f"{what} item size")
        if itemsize not in (1, 2, 4, 8) or (limit - 1).bit_length() > 8 * itemsize:
            raise r.fail(f"{what}: item size {itemsize} does not fit the alphabet")
        length = r.varint(f"{what} frame length", r.left)
        out = _planes_decode(r.take(length, f"{what} zstd frame"), n, itemsize, what)
        if 8 * itemsize > (limit - 1).bit_length() and int(out.max()) >= limit:
            raise r.fail(f"{what}: symbol outside the alphabet [0, {limit})")
        return out.astype(dtype, copy=False)
    raise r.fail(f"{what}: unknown codec {codec}")

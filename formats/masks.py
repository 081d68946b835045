"""Keep-mask streams: ALL, NONE, BITMAP, RUNS (zero-order), PYRAMID and GRID (context-modelled).

RUNS codes the gaps between entries of the minority value, with an escape symbol for long gaps,
through a symbol stream; for an i.i.d. mask this meets the zero-order entropy. PYRAMID codes the
mask coarse-to-fine on the 2-D view (shape[0], rest): each new pixel is coded with a binary model
chosen by its already-decoded neighbours (a semi-static context model in the spirit of JBIG's
resolution reduction and CABAC's neighbour contexts), which goes below the zero-order bound when
kept weights cluster. GRID conditions each entry on the density class of its row and of its
column (side information), which captures what magnitude pruning leaves behind in layers whose
rows and input channels differ in scale. The encoder keeps the shortest stream; SPEC.md gives
every algorithm bit-exactly.
"""
from __future__ import annotations

import numpy as np

from evonnx.formats import ans, symbols
from evonnx.formats.bytesio import Reader, Writer
from evonnx.formats.contexts import MAX_CLASSES, ClassGrid, rank_classes, tile_counts, view_2d

ALL, NONE, BITMAP, RUNS, PYRAMID, GRID = range(6)
CODEC_NAMES = {ALL: "all", NONE: "none", BITMAP: "bitmap", RUNS: "runs", PYRAMID: "pyramid", GRID: "grid"}

MAX_ESCAPE = (1 << 16) - 1
LEVEL_CLASSES = 3                      # step 1, step 2, step >= 4
CONTEXTS_PER_CLASS = 14                # 5 diagonal (group A) + 9 cross (group B) contexts
N_CONTEXTS = 1 + LEVEL_CLASSES * CONTEXTS_PER_CLASS


# -- RUNS -----------------------------------------------------------------------------------------
def _gaps(flat: np.ndarray, polarity: int) -> np.ndarray:
    pos = np.flatnonzero(flat if polarity else ~flat)
    return np.diff(pos, prepend=-1) - 1


def _best_escape(gaps: np.ndarray) -> int:
    """The escape value E minimising the zero-order cost of the run symbols (+ a table estimate)."""
    top = int(gaps.max()) + 1 if gaps.size else 1
    cands = sorted({min(1 << k, MAX_ESCAPE) for k in range(17) if (1 << k) <= 2 * top} | {min(top, MAX_ESCAPE)})
    best = None
    for e in cands:
        counts = np.bincount(gaps % e, minlength=e + 1).astype(np.float64)
        counts[e] = float((gaps // e).sum())
        nz = counts[counts > 0]
        bits = float((nz * np.log2(nz.sum() / nz)).sum()) + 8 * (e + 1 + nz.size)
        if best is None or bits < best[0]:
            best = (bits, e)
    return best[1]


def _run_symbols(gaps: np.ndarray, e: int) -> np.ndarray:
    esc = gaps // e
    counts = esc + 1
    out = np.full(int(counts.sum()), e, np.int64)
    out[np.cumsum(counts) - 1] = gaps % e
    return out


def _encode_runs(flat: np.ndarray, n_kept: int) -> bytes:
    polarity = 1 if n_kept <= flat.size - n_kept else 0
    gaps = _gaps(flat, polarity)
    e = _best_escape(gaps)
    syms = _run_symbols(gaps, e)
    w = Writer().u8(RUNS).u8(polarity).varint(e).varint(syms.size)
    return w.raw(symbols.encode(syms, e + 1)).bytes()


def _decode_runs(r: Reader, size: int, n_kept: int, what: str) -> np.ndarray:
    polarity = r.u8(f"{what} polarity")
    if polarity > 1:
        raise r.fail(f"{what}: polarity {polarity} is not 0 or 1")
    e = r.varint(f"{what} escape", MAX_ESCAPE)
    if e < 1:
        raise r.fail(f"{what}: escape value must be >= 1")
    m = r.varint(f"{what} run-symbol count", size)
    minority = n_kept if polarity else size - n_kept
    syms = symbols.decode(r, m, e + 1, np.int64, what=f"{what} runs")
    ends = np.flatnonzero(syms != e)
    if ends.size != minority or (m and (ends.size == 0 or ends[-1] != m - 1)):
        raise r.fail(f"{what}: runs describe {ends.size} entries, expected {minority}")
    escapes = np.diff(ends, prepend=-1) - 1
    pos = np.cumsum(syms[ends] + e * escapes + 1) - 1
    if pos.size and pos[-1] >= size:
        raise r.fail(f"{what}: runs run past the end of the tensor ({size} entries)")
    flat = np.zeros(size, bool) if polarity else np.ones(size, bool)
    flat[pos] = bool(polarity)
    return flat


# -- PYRAMID --------------------------------------------------------------------------------------
def _levels(rows: int, cols: int) -> list[int]:
    """Steps s = 2^(L-1), ..., 2, 1 where 2^L is the least power of two >= max(rows, cols)."""
    top = max(rows, cols)
    steps, s = [], 1
    while s < top:
        steps.append(s)
        s *= 2
    return steps[::-1]


def _group_contexts(qp: np.ndarray, rq: int, cq: int, r0: int, c0: int, base: int, diagonal: bool) -> np.ndarray:
    """Context ids of the group of Q positions (r0::2, c0::2), Q being qp[1:-1, 1:-1]."""
    nr, nc = len(range(r0, rq, 2)), len(range(c0, cq, 2))

    def nb(di: int, dj: int) -> np.ndarray:
        r, c = r0 + 1 + di, c0 + 1 + dj
        return qp[r:r + 2 * nr:2, c:c + 2 * nc:2][:nr, :nc]

    if diagonal:
        return (base + nb(-1, -1) + nb(-1, 1) + nb(1, -1) + nb(1, 1)).reshape(-1)
    v = nb(-1, 0) + nb(1, 0)
    h = nb(0, -1) + nb(0, 1)
    return (base + 5 + 3 * v + h).reshape(-1)


def _walk(m: np.ndarray, visit) -> None:
    """Visit every group of the pyramid in coding order; `visit(ctx, place)` returns the group's bits
    (1-D, in the group's natural order) and `place` is the writable view they belong to."""
    rows, cols = m.shape
    root = m[0:1, 0:1]
    root[...] = visit(np.zeros(1, np.uint8), root).reshape(1, 1)
    for s in _levels(rows, cols):
        lc = 0 if s == 1 else 1 if s == 2 else 2
        base = 1 + lc * CONTEXTS_PER_CLASS
        q = m[::s, ::s]
        rq, cq = q.shape
        qp = np.zeros((rq + 2, cq + 2), np.uint8)
        qp[1:-1, 1:-1] = q
        place = q[1::2, 1::2]
        if place.size:
            bits = visit(_group_contexts(qp, rq, cq, 1, 1, base, True), place).reshape(place.shape)
            place[...] = bits
            qp[2:-1:2, 2:-1:2][:bits.shape[0], :bits.shape[1]] = bits
        b1, b2 = q[0::2, 1::2], q[1::2, 0::2]
        ctx = np.concatenate([_group_contexts(qp, rq, cq, 0, 1, base, False),
                              _group_contexts(qp, rq, cq, 1, 0, base, False)])
        if ctx.size:
            bits = visit(ctx.astype(np.uint8), (b1, b2))
            b1[...] = bits[:b1.size].reshape(b1.shape)
            b2[...] = bits[b1.size:].reshape(b2.shape)


def _encode_pyramid(mask2d: np.ndarray) -> bytes:
    m = mask2d.astype(np.uint8)
    groups: list[tuple[np.ndarray, np.ndarray]] = []

    def visit(ctx, place):
        bits = (np.concatenate([p.reshape(-1) for p in place]) if isinstance(place, tuple)
                else place.reshape(-1)).copy()
        order = np.argsort(ctx, kind="stable")
        groups.append((ctx[order], bits[order]))
        return bits

    _walk(m, visit)
    all_ctx = np.concatenate([g[0] for g in groups]).astype(np.int64)
    all_bits = np.concatenate([g[1] for g in groups]).astype(np.int64)
    ones = np.bincount(all_ctx, weights=all_bits, minlength=N_CONTEXTS)
    total = np.bincount(all_ctx, minlength=N_CONTEXTS)
    p16 = np.where(total > 0, np.rint(ones * 65536.0 / np.maximum(total, 1)), 32768)
    p16 = np.clip(p16, 1, 65535).astype(np.int64)
    runs = []
    for ctx, bits in groups:
        bounds = np.flatnonzero(np.diff(ctx)) + 1
        for chunk_ctx, chunk in zip(np.split(ctx, bounds), np.split(bits, bounds)):
            runs.append((ans.bits_to_nibbles(chunk), ans.nibble_freq24(int(p16[chunk_ctx[0]]))))
    w = Writer().u8(PYRAMID).array(p16, "<u2")
    ans.write_words(w, ans.encode(runs))
    return w.bytes()


def _decode_pyramid(r: Reader, rows: int, cols: int, what: str) -> np.ndarray:
    p16 = r.array("<u2", N_CONTEXTS, f"{what} context table").astype(np.int64)
    if np.any(p16 < 1):
        raise r.fail(f"{what}: context probabilities must be >= 1")
    dec = ans.Decoder(ans.read_words(r, what), what)
    m = np.zeros((rows, cols), np.uint8)

    def visit(ctx, place):
        order = np.argsort(ctx, kind="stable")
        counts = np.bincount(ctx, minlength=N_CONTEXTS)
        bits = np.empty(ctx.size, np.uint8)
        start = 0
        for c in np.flatnonzero(counts):
            bits[order[start:start + counts[c]]] = ans.decode_bits(dec, int(p16[c]), int(counts[c]))
            start += counts[c]
        return bits

    _walk(m, visit)
    dec.finish()
    return m.view(bool)


# -- GRID -----------------------------------------------------------------------------------------
def _by_column_class(m: np.ndarray, cc: np.ndarray, kc: int) -> np.ndarray:
    """Kept entries of each row within each column class: (rows, kc)."""
    order = np.argsort(cc, kind="stable")
    bounds = np.concatenate(([0], np.cumsum(np.bincount(cc, minlength=kc))))[:-1]
    return np.add.reduceat(np.take(m, order, axis=1), bounds, axis=1, dtype=np.int64)


def _grid_cost(by_col: np.ndarray, rc: np.ndarray, cc: np.ndarray, kr: int, kc: int) -> float:
    """Estimated bits: entropy of the mask given (row class, column class) + side info + table."""
    ones = np.zeros((kr, kc))
    np.add.at(ones, rc, by_col)
    total = np.outer(np.bincount(rc, minlength=kr), np.bincount(cc, minlength=kc)).astype(np.float64)
    zeros = total - ones
    with np.errstate(divide="ignore", invalid="ignore"):
        bits = (np.where(ones > 0, ones * np.log2(total / ones), 0)
                + np.where(zeros > 0, zeros * np.log2(total / zeros), 0))
    side = rc.size * np.log2(kr) + cc.size * np.log2(kc)
    return float(bits.sum() + side + 16 * kr * kc)


def _encode_grid(m: np.ndarray) -> bytes | None:
    rows, cols = m.shape
    row_counts, col_counts = m.sum(1), m.sum(0)
    best = None
    for kc in (1, 4, 8, 16):
        if kc > cols:
            continue
        cc = rank_classes(col_counts, kc)
        by_col = _by_column_class(m, cc, kc)
        for kr in (1, 4, 8, 16):
            if (kr, kc) == (1, 1) or kr > rows:
                continue
            rc = rank_classes(row_counts, kr)
            cost = _grid_cost(by_col, rc, cc, kr, kc)
            if best is None or cost < best[0]:
                best = (cost, ClassGrid(rc, cc, kr, kc))
    if best is None:
        return None
    grid = best[1]
    mp = grid.permute(m)
    ones = tile_counts(mp, grid)
    sizes = np.outer(np.diff(grid.rb), np.diff(grid.cb)).reshape(-1)
    p16 = np.clip(np.rint(ones * 65536.0 / np.maximum(sizes, 1)), 1, 65535).astype(np.int64)
    p16[sizes == 0] = 32768
    runs = [(ans.bits_to_nibbles(mp[rs, cs]), ans.nibble_freq24(int(p16[ctx]))) for ctx, rs, cs in grid.tiles()
            if rs.stop > rs.start and cs.stop > cs.start]
    w = Writer().u8(GRID).u8(grid.kr).u8(grid.kc)
    w.raw(symbols.encode(grid.rc, grid.kr)).raw(symbols.encode(grid.cc, grid.kc)).array(p16, "<u2")
    ans.write_words(w, ans.encode(runs))
    return w.bytes()


def _decode_grid(r: Reader, rows: int, cols: int, what: str) -> np.ndarray:
    kr, kc = r.u8(f"{what} row classes"), r.u8(f"{what} column classes")
    if not (1 <= kr <= MAX_CLASSES and 1 <= kc <= MAX_CLASSES):
        raise r.fail(f"{what}: class counts {kr} x {kc} outside 1..{MAX_CLASSES}")
    rc = symbols.decode(r, rows, kr, np.int64, what=f"{what} row classes")
    cc = symbols.decode(r, cols, kc, np.int64, what=f"{what} column classes")
    p16 = r.array("<u2", kr * kc, f"{what} context table").astype(np.int64)
    if np.any(p16 < 1):
        raise r.fail(f"{what}: context probabilities must be >= 1")
    dec = ans.Decoder(ans.read_words(r, what), what)
    grid = ClassGrid(rc, cc, kr, kc)
    mp = np.empty((rows, cols), np.uint8)
    for ctx, rs, cs in grid.tiles():
        h, w = rs.stop - rs.start, cs.stop - cs.start
        if h and w:
            mp[rs, cs] = ans.decode_bits(dec, int(p16[ctx]), h * w).reshape(h, w)
    dec.finish()
    return grid.unpermute(mp).view(bool)


# -- entry points ---------------------------------------------------------------------------------
def encode(mask: np.ndarray | None, shape: tuple[int, ...]) -> bytes:
    """Shortest mask stream for `mask` (None = all kept)."""
    size = int(np.prod(shape, dtype=np.int64))
    if mask is None:
        return bytes([ALL])
    flat = np.ascontiguousarray(mask).reshape(-1)
    n_kept = int(np.count_nonzero(flat))
    if n_kept == size:
        return bytes([ALL])
    if n_kept == 0:
        return bytes([NONE])
    candidates = [bytes([BITMAP]) + np.packbits(flat, bitorder="little").tobytes(), _encode_runs(flat, n_kept)]
    rows, cols = view_2d(shape, size)
    if size >= 64:
        m2 = flat.reshape(rows, cols)
        candidates.append(_encode_pyramid(m2))
        grid = _encode_grid(m2)
        if grid is not None:
            candidates.append(grid)
    return min(candidates, key=len)


def decode(r: Reader, shape: tuple[int, ...], n_kept: int, what: str) -> np.ndarray | None:
    """Read a mask stream; returns None (all kept) or a bool array of `shape` with n_kept True."""
    size = int(np.prod(shape, dtype=np.int64))
    codec = r.u8(f"{what} codec")
    if codec == ALL:
        if n_kept != size:
            raise r.fail(f"{what}: 'all kept' mask but {n_kept} of {size} entries kept")
        return None
    if codec == NONE:
        if n_kept != 0:
            raise r.fail(f"{what}: 'none kept' mask but {n_kept} entries kept")
        return np.zeros(shape, bool)
    if codec == BITMAP:
        data = np.frombuffer(r.take(-(-size // 8), f"{what} bitmap"), dtype=np.uint8)
        bits = np.unpackbits(data, bitorder="little")
        if bits[size:].any():
            raise r.fail(f"{what}: nonzero padding bits after the bitmap")
        flat = bits[:size].view(bool)
    elif codec == RUNS:
        flat = _decode_runs(r, size, n_kept, what)
    elif codec in (PYRAMID, GRID) and size == 0:
        raise r.fail(f"{what}: {CODEC_NAMES[codec]} mask for an empty tensor")
    elif codec == PYRAMID:
        rows, cols = view_2d(shape, size)
        flat = _decode_pyramid(r, rows, cols, what).reshape(-1)
    elif codec == GRID:
        rows, cols = view_2d(shape, size)
        flat = _decode_grid(r, rows, cols, what).reshape(-1)
    else:
        raise r.fail(f"{what}: unknown mask codec {codec}")
    if codec != RUNS and int(np.count_nonzero(flat)) != n_kept:
        raise r.fail(f"{what}: mask keeps {int(np.count_nonzero(flat))} entries, header says {n_kept}")
    return flat.reshape(shape)

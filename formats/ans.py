"""Static-model rANS coding on `constriction` (AnsCoder: 32-bit words, 64-bit state, 24-bit precision).

A model is an integer frequency table F (F[s] >= 1, sum F == 2**24); SPEC.md gives the exact rANS
arithmetic so that another implementation can decode without constriction. constriction's
`Categorical(p, perfect=False)` quantizes floats as cdf[s] = floor(sum(p[:s]) * (2**24 - A) / sum(p)) + s;
passing p = F - 1 (exact integers in float64) makes that scale exactly 1, so the coder uses F itself.

Tables are sent at a chosen precision P <= 24 (F = f << (24 - P)) to keep small tensors cheap.
Where constriction has no wheel (Linux on ARM), formats/rans.py codes the same words in plain Python.
"""
from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

from evonnx.errors import EvxFormatError
from evonnx.formats import rans
from evonnx.formats.bytesio import Reader, Writer, encode_varints

try:
    import constriction
except ImportError:  # no wheel for this platform: the plain-Python coder, same bytes, slower
    constriction = None

PRECISION = 24
MAX_ALPHABET = 1 << 16
CODER_CHUNK = 1 << 20  # symbols handed to or taken from the coder at a time (int32 there: no 4-byte copy of a run)



def quantize_counts(counts: np.ndarray, precision: int) -> np.ndarray:
    """Frequencies >= 1 summing to 2**precision, close to proportional to `counts` (largest remainder)."""
    counts = np.asarray(counts, dtype=np.float64)
    a = counts.size
    total = 1 << precision
    if total < a:
        raise ValueError(f"precision {precision} cannot hold {a} symbols")
    n = counts.sum()
    if n <= 0:
        f = np.ones(a, np.int64)
        f[0] += total - a
        return f
    share = counts * ((total - a) / n)
    f = 1 + np.floor(share).astype(np.int64)
    left = total - int(f.sum())
    if left > 0:
        order = np.argsort(-(share - np.floor(share)), kind="stable")
        f[order[:left]] += 1
    elif left < 0:  # float rounding pushed the floors over: take back from the largest
        order = np.argsort(-f, kind="stable")
        f[order[:-left]] -= 1
    return f


def table_cost_bits(counts: np.ndarray, precision: int, freqs: np.ndarray) -> float:
    """Bits of the data under `freqs` plus the bits of the table itself."""
    used = counts > 0
    data = -float(np.sum(counts[used] * (np.log2(freqs[used]) - precision)))
    return data + 8 * len(encode_varints(freqs))


def best_table(counts: np.ndarray) -> tuple[int, np.ndarray]:
    """(precision, freqs) minimising table + data bits over precisions that can hold the alphabet."""
    counts = np.asarray(counts, dtype=np.float64)
    lo = min(max(1, math.ceil(math.log2(counts.size)) + 1), PRECISION)
    best = None
    for p in sorted({lo, *range(8, PRECISION + 1, 2)} - set(range(lo))):
        f = quantize_counts(counts, p)
        cost = table_cost_bits(counts, p, f)
        if best is None or cost < best[0]:
            best = (cost, p, f)
    return best[1], best[2]


def write_table(w: Writer, precision: int, freqs: np.ndarray) -> None:
    """u8 precision, then one varint per frequency (the alphabet size is written by the caller)."""
    w.u8(precision)
    w.raw(encode_varints(freqs))


def read_table(r: Reader, alphabet: int, what: str, precision: int) -> np.ndarray:
    """Read the frequencies of a table whose precision byte was `precision`; return them at 24 bits."""
    if not 1 <= precision <= PRECISION:
        raise r.fail(f"{what}: table precision {precision} outside 1..{PRECISION}")
    f = r.varints(alphabet, f"{what} frequencies", 1 << precision)
    if np.any(f < 1) or int(f.sum()) != 1 << precision:
        raise r.fail(f"{what}: frequencies must be >= 1 and sum to 2^{precision}")
    return f << (PRECISION - precision)


def scaled(freqs: np.ndarray, precision: int) -> np.ndarray:
    return np.asarray(freqs, np.int64) << (PRECISION - precision)


def _categorical(freq24: np.ndarray):
    return constriction.stream.model.Categorical((np.asarray(freq24, np.int64) - 1).astype(np.float64), perfect=False)


@lru_cache(maxsize=4096)
def _nibble_table(p16: int) -> np.ndarray:
    q = (1 << 16) - p16, p16
    f = np.array([q[s & 1] * q[s >> 1 & 1] * q[s >> 2 & 1] * q[s >> 3 & 1] >> 40 for s in range(16)], np.int64)
    f = np.maximum(f, 1)
    f[int(np.argmax(f))] += (1 << PRECISION) - int(f.sum())
    f.flags.writeable = False
    return f


def nibble_freq24(p16: int) -> np.ndarray:
    """24-bit table of 4 independent bits with P(1) = p16 / 2**16 each, as one symbol b0 + 2b1 + 4b2 + 8b3:
    F[s] = max(1, prod_j (bit j of s ? p16 : 2**16 - p16) >> 40), the first largest entry absorbing the
    difference to 2**24."""
    return _nibble_table(int(p16))


_NIBBLE_BITS = ((np.arange(16)[:, None] >> np.arange(4)) & 1).astype(np.uint8)


def bits_to_nibbles(bits: np.ndarray) -> np.ndarray:
    """Bits (0/1, any length) as nibble symbols, 4 bits each, first bit lowest; zero padding at the end."""
    b = np.asarray(bits, np.uint8).reshape(-1)
    pad = -b.size % 4
    if pad:
        b = np.concatenate([b, np.zeros(pad, np.uint8)])
    g = b.reshape(-1, 4)
    return (g[:, 0] | g[:, 1] << 1 | g[:, 2] << 2 | g[:, 3] << 3).astype(np.int32)


def decode_bits(dec: "Decoder", p16: int, count: int) -> np.ndarray:
    """`count` bits coded as nibbles with model `p16`; padding bits must be zero."""
    if count == 0:
        return np.zeros(0, np.uint8)
    sym = dec.decode(nibble_freq24(p16), -(-count // 4))
    tail = count % 4
    if tail and int(sym[-1]) >> tail:
        raise EvxFormatError(f"{dec.what}: nonzero padding bits in a bit run")
    return _NIBBLE_BITS[sym].reshape(-1)[:count]


def encode(runs: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """Encode runs (symbols, freq24) so that they decode in the given order; returns uint32 words."""
    if constriction is None:
        return rans.encode(runs)
    coder = constriction.stream.stack.AnsCoder()
    for symbols, freq24 in reversed(runs):
        model = _categorical(freq24)
        for end in range(len(symbols), 0, -CODER_CHUNK):  # the last chunk first: the stack then decodes in order
            coder.encode_reverse(np.ascontiguousarray(symbols[max(0, end - CODER_CHUNK):end], dtype=np.int32), model)
    return coder.get_compressed().astype("<u4", copy=False)


def write_words(w: Writer, words: np.ndarray) -> None:
    w.varint(words.size)
    w.array(words, "<u4")


def read_words(r: Reader, what: str) -> np.ndarray:
    count = r.varint(f"{what} word count", r.left // 4)
    return r.array("<u4", count, f"{what} words")


class ConstrictionDecoder:
    """Pops runs off one ANS stream; `finish` checks the stream was used up exactly."""

    def __init__(self, words: np.ndarray, what: str):
        self.what = what
        try:
            self.coder = constriction.stream.stack.AnsCoder(np.ascontiguousarray(words, dtype=np.uint32))
        except (ValueError, TypeError) as exc:
            raise EvxFormatError(f"{what}: corrupt entropy-coded stream ({exc})") from None

    def decode(self, freq24: np.ndarray, count: int) -> np.ndarray:
        if count == 0:
            return np.zeros(0, np.int32)
        try:
            return self.coder.decode(_categorical(freq24), int(count))
        except (ValueError, TypeError, OverflowError) as exc:
            raise EvxFormatError(f"{self.what}: corrupt entropy-coded stream ({exc})") from None

    def finish(self) -> None:
        if not self.coder.is_empty():
            raise EvxFormatError(f"{self.what}: corrupt entropy-coded stream (data left after the last symbol)")


Decoder = rans.Decoder if constriction is None else ConstrictionDecoder

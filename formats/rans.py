"""SPEC.md section 7's rANS coder in plain Python: the stand-in for `constriction` where it has no wheel.

constriction ships compiled wheels for x86-64 Linux, macOS and Windows only, so a Linux ARM target (a
Raspberry Pi, a Jetson) decodes with this module instead. Same words, same symbols, same errors as the
compiled coder (a test checks it on random streams); about a microsecond per symbol, so a model of a few
million coded weights decodes in seconds rather than milliseconds. rANS is sequential by construction: the
loops below are the algorithm, not a missed vectorisation.
"""
from __future__ import annotations

from bisect import bisect_right

import numpy as np

from evonnx.errors import EvxFormatError

PRECISION = 24
_LOW = (1 << PRECISION) - 1
_WORD = (1 << 32) - 1


def _tables(freq24: np.ndarray) -> tuple[list[int], list[int]]:
    f = np.asarray(freq24, np.int64)
    return f.tolist(), (np.cumsum(f) - f).tolist()


def encode(runs: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """Encode runs (symbols, freq24) so that they decode in the given order; returns uint32 words."""
    words: list[int] = []
    state = 0
    for symbols, freq24 in reversed(runs):
        freqs, starts = _tables(freq24)
        for s in reversed(np.asarray(symbols).tolist()):
            f = freqs[s]
            if state >> (64 - PRECISION) >= f:
                words.append(state & _WORD)
                state >>= 32
            state = ((state // f) << PRECISION) + starts[s] + state % f
    tail = [state & _WORD, state >> 32]
    while tail and tail[-1] == 0:
        tail.pop()
    return np.array(words + tail, dtype="<u4")


class Decoder:
    """Pops runs off one rANS stream; `finish` checks the stream was used up exactly."""

    def __init__(self, words: np.ndarray, what: str):
        self.what = what
        self.words: list[int] = np.asarray(words, np.uint32).tolist()
        self.state = 0
        if self.words:
            self.state = self.words.pop()
            if self.state == 0:
                raise EvxFormatError(f"{what}: corrupt entropy-coded stream (its last word is zero)")
            if self.words:
                self.state = (self.state << 32) | self.words.pop()

    def decode(self, freq24: np.ndarray, count: int) -> np.ndarray:
        freqs, starts = _tables(freq24)
        words, state, out = self.words, self.state, []
        for _ in range(int(count)):
            low = state & _LOW
            s = bisect_right(starts, low) - 1
            state = (state >> PRECISION) * freqs[s] + low - starts[s]
            if state <= _WORD and words:
                state = (state << 32) | words.pop()
            out.append(s)
        self.state = state
        return np.array(out, dtype=np.int32)

    def finish(self) -> None:
        if self.state != 0 or self.words:
            raise EvxFormatError(f"{self.what}: corrupt entropy-coded stream (data left after the last symbol)")

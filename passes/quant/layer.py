"""One weight to one QuantizedTensor: the scheme options, the survivors, and the never-zero guard.

Only the survivors (keep-mask True and value nonzero) are coded; every other entry is +0.0 by the
mask. A survivor whose dequantized value would be 0.0 is moved to the nearest nonzero level on its
side of zero (counted as `bumped`); if no such level exists the tensor is stored raw (`fallback`).
A per-channel grid is fitted a block of channels at a time (each channel's grid is its own), so the fit's
float64 temporaries (~30 bytes an entry) stay within a block of SLICE entries: a 268M-entry layer of a model
over 2 GiB needed 10 GB of them at once.
"""
from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np

from evonnx.errors import EvonnxError
from evonnx.formats.tensor import QuantizedTensor, dequantize
from evonnx.passes.quant.kmeans import kmeans_1d
from evonnx.passes.quant.uniform import RATE_BITS, fit_rate, fit_uniform

SLICE = 1 << 22  # entries of a per-channel weight whose grids are fitted at a time

_SPEC = re.compile(r"(uniform(?:/(channel|tensor))?(?:/(sym|asym|rate))?(\+gptq)?|codebook(\+refit)?|raw)"
                   r"(?:@(\d+(?:\.5)?))?")


@dataclass(frozen=True)
class QuantSpec:
    """How to quantize one weight: 'uniform/channel/sym@4', 'uniform/tensor/asym@3', 'uniform/channel/rate@4'
    (a fine grid sized for about 4 entropy-coded bits a weight, passes/quant/uniform.py; its rate may be a
    half, 'uniform/channel/rate@3.5', since it sets a step, not a number of levels), any uniform grid
    with '+gptq' (rounded with the layer output's error compensated, passes/quant/gptq.py, where the weight
    has a matrix view and activations; rounded to nearest elsewhere), 'codebook@4', 'codebook+refit@3'
    (centroids re-fitted to the layer output) or 'raw' (exact)."""

    scheme: str = "uniform"  # uniform | codebook | raw
    bits: float = 8  # an integer, except a rate grid's rate
    per_channel: bool = True
    symmetric: bool = True
    refit: bool = False  # codebook: centroids re-fitted; uniform: rounding error compensated (GPTQ)
    rate: bool = False  # uniform: `bits` is the coded rate of an entropy-sized grid, not the code range

    @property
    def family(self) -> str:
        if self.scheme == "uniform":
            grid = "rate" if self.rate else "sym" if self.symmetric else "asym"
            return f"uniform/{'channel' if self.per_channel else 'tensor'}/{grid}{'+gptq' if self.refit else ''}"
        return "codebook+refit" if self.scheme == "codebook" and self.refit else self.scheme

    @property
    def label(self) -> str:
        return self.family if self.scheme == "raw" else f"{self.family}@{self.bits:g}"

    @classmethod
    def parse(cls, text: str, bits: float | None = None) -> "QuantSpec":
        match = _SPEC.fullmatch(text.strip())
        if not match:
            raise EvonnxError(f"bad quantization scheme {text!r} (e.g. uniform/channel/sym@4, codebook@3, raw)")
        head, gran, sym, gptq, refit, b = match.groups()
        nbits = float(b) if b else float(bits if bits is not None else 8)
        if head == "raw":
            return cls("raw", 32)
        if not 1 <= nbits <= 8:
            raise EvonnxError(f"{text!r}: bits must be 1 to 8, got {nbits:g}")
        if not nbits.is_integer() and sym != "rate":
            raise EvonnxError(f"{text!r}: only an entropy-sized grid (uniform/.../rate) takes a fractional width")
        nbits = int(nbits) if nbits.is_integer() else nbits
        if head.startswith("uniform"):
            return cls("uniform", nbits, gran != "tensor", sym != "asym", refit=bool(gptq), rate=sym == "rate")
        return cls("codebook", nbits, refit=bool(refit))


@dataclass
class Quantized:
    tensor: QuantizedTensor
    held: np.ndarray | None  # dequantize(tensor), when held (see `compact`)
    bumped: int = 0
    fallback: bool = False

    @property
    def weight(self) -> np.ndarray:
        """dequantize(tensor): what the engine measures and the decoder rebuilds."""
        return self.held if self.held is not None else dequantize(self.tensor)

    def compact(self) -> "Quantized":
        """The same without the dequantized copy (its codes take a byte an entry, the copy four)."""
        return replace(self, held=None)


def survivors(array: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    """The entries to code: allowed by the keep-mask and nonzero."""
    keep = array != 0
    return keep if mask is None else keep & mask.astype(bool)


def quantize_weight(name: str, array: np.ndarray, keep: np.ndarray, spec: QuantSpec, channel_axis: int | None,
                    refit: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None,
                    compensate: Callable[[np.ndarray, np.ndarray, float], np.ndarray] | None = None) -> Quantized:
    """Quantize the `keep` entries of `array`. `refit(codes, centroids) -> centroids` re-fits a k-means
    codebook with its assignments fixed (used when spec.refit); `compensate(scale, zero, top) -> codes` rounds
    the whole weight onto a uniform grid (per channel: along `channel_axis`) with its error compensated."""
    mask = None if keep.all() else keep
    if spec.scheme == "raw" or not keep.any():  # nothing survives: an empty raw record says it all
        t = QuantizedTensor.raw(name, array, mask)
        return Quantized(t, dequantize(t))
    if spec.scheme == "uniform":
        axis = channel_axis if spec.per_channel and channel_axis is not None and array.ndim else None
        codes, scale, zero = _channel_grids(array, keep, axis, spec)
        bits = RATE_BITS if spec.rate else spec.bits
        if compensate is not None:
            codes = compensate(scale, zero, float(2 ** bits - 1))[keep]
        if axis is None:
            scale, zero = scale.reshape(()), zero.reshape(())
        t = QuantizedTensor.uniform(name, array.shape, array.dtype.name, bits, codes, scale, zero, mask, axis)
    else:
        codes, centroids = kmeans_1d(array[keep].astype(np.float64), 1 << spec.bits)
        if spec.refit:
            if refit is None:
                raise EvonnxError(f"{name}: {spec.label} needs layer activations, which this weight has none of")
            centroids = refit(codes, centroids)
        t = QuantizedTensor.codebook(name, array.shape, array.dtype.name, spec.bits, codes, centroids, mask)
    return never_zero(t, array, keep)


def _grids(values: np.ndarray, groups: np.ndarray, n_groups: int, spec: QuantSpec):
    """(codes, scale, zero point) of `values` in `n_groups` groups under a uniform spec."""
    return (fit_rate(values, groups, n_groups, spec.bits) if spec.rate else
            fit_uniform(values, groups, n_groups, spec.bits, spec.symmetric))


def _channel_grids(array: np.ndarray, keep: np.ndarray, axis: int | None,
                   spec: QuantSpec) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The codes of the `keep` entries (C order) and the grids: one (axis None), or one per channel along `axis`,
    fitted SLICE entries' worth of channels at a time, their codes scattered back in place."""
    if axis is None:
        return _grids(array[keep], np.zeros(int(np.count_nonzero(keep)), np.int32), 1, spec)
    channels = array.shape[axis]
    per = max(1, SLICE // max(array.size // max(channels, 1), 1))
    if per >= channels:
        return _block_grids(array, keep, axis, spec)
    whole, scales, zeros = np.zeros(array.shape, np.uint8), [], []
    for start in range(0, channels, per):
        block = (slice(None),) * axis + (slice(start, min(start + per, channels)),)
        codes, scale, zero = _block_grids(array[block], keep[block], axis, spec)
        whole[block][keep[block]] = codes  # a view of `whole`: written in place
        scales.append(scale)
        zeros.append(zero)
    return whole[keep], np.concatenate(scales), np.concatenate(zeros)


def _block_grids(array: np.ndarray, keep: np.ndarray, axis: int,
                 spec: QuantSpec) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`_channel_grids` of channels fitted together: each survivor's channel index, 4 bytes each (np.nonzero
    would make ndim 8-byte arrays)."""
    index = np.arange(array.shape[axis], dtype=np.int32).reshape([-1 if i == axis else 1 for i in range(array.ndim)])
    return _grids(array[keep], np.broadcast_to(index, array.shape)[keep], array.shape[axis], spec)


def never_zero(t: QuantizedTensor, array: np.ndarray, keep: np.ndarray) -> Quantized:
    """`t` with every survivor (keep True) that decodes to 0 moved one level towards its sign in `array`
    (or, for a codebook, to the nearest non-zero centroid on its side), so masks stay exact."""
    weight = dequantize(t)
    zero = weight == 0
    zero &= keep
    if not zero.any():
        return Quantized(t, weight)
    bad = np.flatnonzero(zero[keep])
    del zero
    codes = t.codes.astype(np.int16)  # a level up or down stays in [-1, 256]
    sign = np.sign(array[keep][bad]).astype(np.int16)
    if t.scheme == "uniform":
        up = codes[bad] + sign
        codes[bad] = np.where((up >= 0) & (up < 1 << t.bits), up, codes[bad] - sign)
        fixed = QuantizedTensor.uniform(t.name, t.shape, t.dtype, t.bits, codes, t.scale, t.zero_point,
                                        t.mask, t.axis, t.block_size)
    else:
        nonzero = np.flatnonzero(t.centroids != 0)
        if nonzero.size:
            target = array[keep][bad].astype(np.float64)
            cents = t.centroids[nonzero].astype(np.float64)
            dist = np.abs(cents[None, :] - target[:, None])
            penalty = 2 * (np.abs(cents).max() + np.abs(target).max()) + 1  # beats any level on its own side
            dist += penalty * (np.sign(cents)[None, :] != sign[:, None])
            codes[bad] = nonzero[np.argmin(dist, axis=1)]
        fixed = QuantizedTensor.codebook(t.name, t.shape, t.dtype, t.bits, codes, t.centroids, t.mask)
    weight = dequantize(fixed)
    if np.any(weight[keep] == 0):  # no nonzero level at all (degenerate scale): keep the tensor exact
        raw = QuantizedTensor.raw(t.name, array, t.mask)
        return Quantized(raw, dequantize(raw), fallback=True)
    return Quantized(fixed, weight, bumped=int(bad.size))

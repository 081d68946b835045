"""Keep-masks and quantization enforced while a weight trains, and the records rebuilt afterwards.

One `Constraint` per trained weight. Its `transform` is what the graph reads (installed in
`OnnxModule.transforms`); `finish(w)` turns the trained parameter into the final (weight, record):

* no record: w * mask, no record (the mask zeros are exact).
* uniform record, mode "ste": the forward uses the record's fixed grid, (clip(round(w/s + z)) - z) * s,
  with a straight-through gradient to the float latent w; at the end codes are recomputed on that grid.
* codebook record, mode "ste": the assignments are fixed and the centroids train (Deep Compression's
  weight-sharing fine-tune); the latent w is unused.
* raw record of a target: plain masked training, a new raw record with the same mask.
* mode "requantize": plain masked training, then the record's scheme and bits are fitted afresh.

Every final weight is `dequantize(record)` of its new record, bit for bit.
"""
from __future__ import annotations

import numpy as np
import torch

from evonnx.errors import EvonnxError
from evonnx.formats.tensor import QuantizedTensor, dequantize
from evonnx.passes.quant.layer import QuantSpec, never_zero, quantize_weight

MODES = ("ste", "requantize")


def param_map(t: QuantizedTensor, values: np.ndarray) -> np.ndarray:
    """A per-tensor / per-channel / blocked parameter (scale or zero_point) broadcast to the full shape."""
    if t.axis is None:
        return np.broadcast_to(values.astype(np.float32), t.shape)
    if t.block_size:
        full = np.repeat(values, t.block_size, axis=t.axis)
        return np.take(full, np.arange(t.shape[t.axis]), axis=t.axis)
    shape = [1] * len(t.shape)
    shape[t.axis] = t.shape[t.axis]
    return np.broadcast_to(values.reshape(shape), t.shape)


def spec_of(t: QuantizedTensor) -> QuantSpec:
    """The QuantSpec that would build a record like `t` (codebook re-fit is not recoverable: plain k-means)."""
    if t.scheme == "raw":
        return QuantSpec("raw", 32)
    if t.scheme == "codebook":
        return QuantSpec("codebook", t.bits)
    mid = (2 ** t.bits - 1) / 2
    return QuantSpec("uniform", t.bits, t.axis is not None, bool(np.all(t.zero_point == np.float32(mid))))


class Constraint:
    """What a trained weight must satisfy: its keep-mask and, if any, its quantized record."""

    def __init__(self, name: str, mask: np.ndarray | None, record: QuantizedTensor | None, mode: str,
                 channel_axis: int | None):
        if mode not in MODES:
            raise EvonnxError(f"quantization mode must be one of {MODES}, got {mode!r}")
        self.name, self.record, self.mode, self.channel_axis = name, record, mode, channel_axis
        if record is not None and record.mask is not None:
            mask = record.mask if mask is None else (mask & record.mask)
        self.mask = mask
        self._mask_t = None if mask is None else torch.from_numpy(mask.astype(np.float32))
        self.centroids: torch.nn.Parameter | None = None
        scheme = record.scheme if record is not None and mode == "ste" else None
        if scheme == "uniform":
            self._scale = torch.from_numpy(np.ascontiguousarray(param_map(record, record.scale), np.float32))
            self._zero = torch.from_numpy(np.ascontiguousarray(param_map(record, record.zero_point), np.float32))
        elif scheme == "codebook":
            self.centroids = torch.nn.Parameter(torch.from_numpy(record.centroids.copy()))
            codes = np.zeros(record.size, np.int64)
            kept = np.ones(record.size, bool) if record.mask is None else record.mask.reshape(-1)
            codes[kept] = record.codes
            self._codes = torch.from_numpy(codes.reshape(record.shape))
        self.scheme = scheme

    def to(self, device: torch.device) -> "Constraint":
        """Move the constraint's tensors (and its centroids, in place) to `device`, before the optimizer."""
        for key in ("_mask_t", "_scale", "_zero", "_codes"):
            if getattr(self, key, None) is not None:
                setattr(self, key, getattr(self, key).to(device))
        if self.centroids is not None:
            self.centroids.data = self.centroids.data.to(device)
        return self

    def set_mask(self, mask: np.ndarray) -> None:
        """A new keep-mask (prune-and-regrow), on the device of the old one."""
        device = self._mask_t.device if self._mask_t is not None else "cpu"
        self.mask = mask
        self._mask_t = torch.from_numpy(mask.astype(np.float32)).to(device)

    def _masked(self, w: torch.Tensor) -> torch.Tensor:
        return w if self._mask_t is None else w * self._mask_t

    def transform(self, w: torch.Tensor) -> torch.Tensor:
        if self.scheme == "uniform":
            top = float(2 ** self.record.bits - 1)
            q = torch.clamp(torch.round(w.detach() / self._scale + self._zero), 0.0, top)
            w = w + ((q - self._zero) * self._scale - w).detach()
        elif self.scheme == "codebook":
            w = self.centroids[self._codes]
        return self._masked(w)

    def project(self, w: torch.Tensor) -> None:
        """After an optimizer step: pruned entries of the latent weight back to exactly zero."""
        if self._mask_t is not None:
            with torch.no_grad():
                w.mul_(self._mask_t)

    def finish(self, w: np.ndarray) -> tuple[np.ndarray, QuantizedTensor | None]:
        """(final weight, new record or None) from the trained latent parameter."""
        w = np.where(self.mask, w, 0).astype(w.dtype) if self.mask is not None else w
        r = self.record
        if r is None:
            return w, None
        keep = r.mask if r.mask is not None else np.ones(r.shape, bool)
        if r.scheme == "raw":
            t = QuantizedTensor.raw(r.name, w, r.mask)
            return dequantize(t), t
        if self.scheme == "codebook":
            t = QuantizedTensor.codebook(r.name, r.shape, r.dtype, r.bits, r.codes,
                                         self.centroids.detach().cpu().numpy().astype(np.float32), r.mask)
            q = never_zero(t, np.where(keep, w, 0), keep)  # w: the record's values, signs of the survivors
        elif self.scheme == "uniform":
            v = w[keep].astype(np.float64)
            scale, zero = param_map(r, r.scale)[keep], param_map(r, r.zero_point)[keep]
            codes = np.clip(np.rint(v / scale + zero), 0, 2 ** r.bits - 1).astype(np.int64)
            t = QuantizedTensor.uniform(r.name, r.shape, r.dtype, r.bits, codes, r.scale, r.zero_point, r.mask,
                                        r.axis, r.block_size)
            q = never_zero(t, np.where(keep, w, 0), keep)
        else:  # requantize: same scheme and bits, fitted to the trained survivors
            w_keep = np.where(keep, w, 0).astype(w.dtype)
            keep = keep & (w_keep != 0)
            q = quantize_weight(r.name, w_keep, keep, spec_of(r), self.channel_axis)
        return q.weight, q.tensor

"""Gradient saliencies of weight entries (higher = more important), from the ONNX graph run in torch.

taylor1: sum over batches of |w * dL/dw| (first-order Taylor, Molchanov et al. 2019);
snip: |w * sum over batches of dL/dw| (connection sensitivity at the current weights, Lee et al. 2019);
taylor2: 0.5 * w^2 * diag(H), H estimated by the Fisher: the mean over single samples of (d log p(y)/dw)^2
with y drawn from the model's own prediction (the Hessian of the KL to itself; Optimal Brain Damage).
L is the cross-entropy to the calibration labels, or to the model's own top-1 without labels.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from evonnx.errors import EvonnxError
from evonnx.passes.engine.calib import CalibData
from evonnx.passes.torchnet.convert import OnnxModule

METHODS = ("taylor1", "snip", "taylor2")


def _head(outputs: list[torch.Tensor]) -> torch.Tensor:
    for o in outputs:
        if o.ndim == 2 and o.shape[1] >= 2 and o.is_floating_point():
            return o
    raise EvonnxError("gradient saliency needs a classifier output [N, C]")


def saliency(module: OnnxModule, calib: CalibData, method: str, samples: int, batch: int, seed: int
             ) -> dict[str, np.ndarray]:
    if method not in METHODS:
        raise EvonnxError(f"gradient saliency: method must be one of {METHODS}, got {method!r}")
    n = min(samples, calib.num_samples)
    device = module.device
    xs = [torch.from_numpy(np.ascontiguousarray(calib.inputs[k][:n])).to(device) for k in module.input_names]
    params = {name: module.parameter(name) for name in module.weight_names}
    acc = {name: torch.zeros_like(p) for name, p in params.items()}
    if calib.labels is not None:
        labels = torch.from_numpy(calib.labels[:n].astype(np.int64)).to(device)
    else:
        with torch.no_grad():
            labels = _head(module(*xs)).argmax(-1)
    gen = torch.Generator().manual_seed(seed)
    step = 1 if method == "taylor2" else batch
    for i in range(0, n, step):
        out = _head(module(*[x[i:i + step] for x in xs]))
        if method == "taylor2":
            y = torch.multinomial(F.softmax(out.detach(), -1).cpu(), 1, generator=gen)[:, 0].to(device)
            loss = F.cross_entropy(out, y)
        else:
            loss = F.cross_entropy(out, labels[i:i + step], reduction="sum")
        grads = torch.autograd.grad(loss, list(params.values()))
        for (name, p), g in zip(params.items(), grads):
            if method == "taylor1":
                acc[name] += (p.detach() * g).abs()
            elif method == "snip":
                acc[name] += g
            else:
                acc[name] += g * g
    out = {}
    for name, p in params.items():
        w = p.detach()
        score = (w * acc[name]).abs() if method == "snip" else acc[name] if method == "taylor1" else \
            0.5 * w * w * acc[name] / n
        out[name] = score.cpu().numpy().astype(np.float64)
    return out

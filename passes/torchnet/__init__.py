"""ONNX graphs as torch modules, for gradient-based passes (distill-finetune, gradient priors).

Imports torch: passes import this subpackage inside `run`, through `require_torch()`, so that
`import evonnx.passes` keeps working without torch.
"""
from __future__ import annotations

from evonnx.errors import EvonnxError


def require_torch(what: str):
    """The torch module, or an EvonnxError saying `what` needs it."""
    try:
        import torch
    except ImportError:
        raise EvonnxError(f"{what} needs torch (pip install 'evonnx[torch]')") from None
    return torch


def torch_device(torch, requested: str = "auto"):
    """The torch device for `requested` in auto|cpu|cuda: 'auto' takes CUDA when torch sees a GPU, else the
    CPU, quietly; 'cuda' without one is a user error."""
    if requested not in ("auto", "cpu", "cuda"):
        raise EvonnxError(f"device must be auto, cpu or cuda, not {requested!r}")
    if requested != "cpu" and torch.cuda.is_available():
        return torch.device("cuda")
    if requested == "cuda":
        raise EvonnxError("CUDA was requested but torch sees no usable GPU here (a CPU build of torch, or no "
                          "driver); use --device cpu")
    return torch.device("cpu")

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

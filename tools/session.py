"""An onnxruntime session of a decoded .evx model, for users who have onnxruntime.

Kept out of evonnx.runtime so that the decoder never imports onnxruntime.
"""
from __future__ import annotations

import onnxruntime as ort

from evonnx.runtime.decode import decode
from evonnx.passes.engine.session import inference_session


def session(path_or_bytes, providers=None, format: str = "fp32", sess_options=None):  # noqa: A002
    """An onnxruntime InferenceSession of the decoded model (CPU unless `providers` says otherwise).

    For the qdq form without `sess_options`, 4-bit blocked MatMuls that onnxruntime fuses into
    MatMulNBits keep float32 accuracy (session.qdq_matmulnbits_accuracy_level = 1; onnxruntime's
    default, 4, would quantize their activations to int8).
    """
    model = decode(path_or_bytes, format)
    if sess_options is None and format == "qdq":
        sess_options = ort.SessionOptions()
        sess_options.add_session_config_entry("session.qdq_matmulnbits_accuracy_level", "1")
    return inference_session(model, sess_options, list(providers) if providers else None)

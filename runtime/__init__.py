"""Light runtime: rebuild ONNX models from .evx files with numpy and onnx only.

`decode` returns an onnx.ModelProto; `session` (onnxruntime, imported only when called) returns an
InferenceSession of it.
"""
from evonnx.runtime.decode import FORMATS, decode, session

__all__ = ["decode", "session", "FORMATS"]

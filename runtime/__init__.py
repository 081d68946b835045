"""Light runtime: rebuild ONNX models from .evx files with numpy and onnx only.

`decode` returns an onnx.ModelProto; `evonnx.tools.session.session` (which needs onnxruntime) returns an
InferenceSession of it.
"""
from evonnx.runtime.decode import FORMATS, decode
from evonnx.runtime.summary import inspect

__all__ = ["decode", "inspect", "FORMATS"]

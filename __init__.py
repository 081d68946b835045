"""evonnx: compress ONNX models far beyond quantization and rebuild them as ONNX.

Heavy parts (onnxruntime, torch) load lazily so that `evonnx.runtime` and
`evonnx.formats` stay importable on targets that only have numpy and onnx.
"""
from evonnx.errors import CalibrationError, EvonnxError, EvxFormatError, ModelError

__version__ = "0.1.0"
__all__ = ["EvonnxError", "ModelError", "CalibrationError", "EvxFormatError", "compress", "CompressRequest",
           "CompressResult", "decode", "inspect", "Pipeline", "load_state", "__version__"]

# the user API, imported on first use: compress needs onnxruntime, decode only numpy and onnx
_LAZY = {"compress": "evonnx.passes.compress", "CompressRequest": "evonnx.passes.compress",
         "CompressResult": "evonnx.passes.compress",
         "decode": "evonnx.runtime.decode", "inspect": "evonnx.runtime.summary",
         "Pipeline": "evonnx.passes.pipeline", "load_state": "evonnx.passes.state"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'evonnx' has no attribute {name!r}")

"""evonnx: compress ONNX models far beyond quantization and rebuild them as ONNX.

Heavy parts (onnxruntime, torch) load lazily so that `evonnx.runtime` and
`evonnx.formats` stay importable on targets that only have numpy and onnx.
"""
from evonnx.errors import CalibrationError, EvonnxError, EvxFormatError, ModelError

__version__ = "0.1.0"
__all__ = ["EvonnxError", "ModelError", "CalibrationError", "EvxFormatError", "compress", "CompressResult",
           "__version__"]


def __getattr__(name: str):
    """`evonnx.compress` and `evonnx.CompressResult`, imported on first use (they need onnxruntime)."""
    if name in ("compress", "CompressResult"):
        from evonnx.passes import compress as orchestration
        return getattr(orchestration, name)
    raise AttributeError(f"module 'evonnx' has no attribute {name!r}")

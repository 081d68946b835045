"""Pick the ONNX Runtime execution provider that actually works here, quietly."""
from __future__ import annotations

import contextlib
import functools
import io

import onnx
import onnxruntime as ort
from onnx import helper

from evonnx.errors import EvonnxError

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"


@functools.lru_cache(maxsize=1)
def cuda_usable() -> bool:
    """True when a session asked for CUDA really gets it (onnxruntime-gpu lists CUDA even without its libraries)."""
    if CUDA not in ort.get_available_providers():
        return False
    if hasattr(ort, "preload_dlls"):
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            try:
                ort.preload_dlls()  # CUDA/cuDNN from pip packages or torch, when present
            except Exception:  # noqa: BLE001 - absent libraries are the common case, not an error
                pass
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "probe",
                              [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])])
    probe = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    ort.set_default_logger_severity(4)  # silence the library-loading errors of a CUDA-less machine
    try:
        options = ort.SessionOptions()
        options.log_severity_level = 4
        session = ort.InferenceSession(probe.SerializeToString(), options, providers=[CUDA, CPU])
        return session.get_providers()[0] == CUDA
    except Exception:  # noqa: BLE001
        return False
    finally:
        ort.set_default_logger_severity(3)


def resolve(device: str = "auto") -> list[str]:
    """Providers for `device` in auto|cpu|cuda; 'cuda' that cannot work is a user error, 'auto' falls back."""
    if device == "cpu":
        return [CPU]
    if device not in ("auto", "cuda"):
        raise EvonnxError(f"--device must be auto, cpu or cuda, not {device!r}")
    if cuda_usable():
        return [CUDA, CPU]
    if device == "cuda":
        raise EvonnxError("CUDA was requested but is not usable here (no GPU or CUDA/cuDNN libraries); use --device cpu")
    return [CPU]

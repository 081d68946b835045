"""evonnx.runtime and evonnx.formats must stay importable with numpy + onnx only (no torch, onnxruntime, passes)."""
from __future__ import annotations

import subprocess
import sys

CHECK = r"""
import importlib, pkgutil, sys
import evonnx.runtime, evonnx.formats
for pkg in (evonnx.runtime, evonnx.formats):
    for info in pkgutil.iter_modules(pkg.__path__):
        importlib.import_module(f"{pkg.__name__}.{info.name}")
banned = sorted(m for m in sys.modules
                if m.split(".")[0] in ("torch", "onnxruntime") or m.split(".")[:2] == ["evonnx", "passes"])
print(",".join(banned))
"""


def test_runtime_and_formats_import_neither_torch_onnxruntime_nor_passes():
    out = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "", f"banned modules imported: {out.stdout.strip()}"


def test_decode_works_without_onnxruntime():
    """With onnxruntime made unimportable, decode still works."""
    code = r"""
import sys
sys.modules["onnxruntime"] = None  # any import of it now fails
import numpy as np
from onnx import helper
from evonnx.formats import QuantizedTensor, encode_evx
from evonnx.runtime import decode
graph = helper.make_model(helper.make_graph([], "g", [], []))
blob = encode_evx(graph, [QuantizedTensor.raw("w", np.ones(3, np.float32))])
assert decode(blob).graph.initializer[0].name == "w"
print("ok")
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"

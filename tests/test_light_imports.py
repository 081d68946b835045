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


BLOCK_SEARCH = "import sys\nfor m in ('onnxruntime', 'torch', 'onnx_graphsurgeon', 'rapidfuzz', 'scipy', 'matplotlib'):\n" \
               "    sys.modules[m] = None  # as after a plain `pip install evonnx`\nfrom evonnx.tools.cli import main\n"


def _cli_without_search(args: list[str]) -> subprocess.CompletedProcess:
    code = BLOCK_SEARCH + f"sys.exit(main({args!r}))"
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


def test_cli_decodes_and_inspects_with_the_core_dependencies_only(tmp_path):
    import numpy as np
    from onnx import TensorProto, helper

    from evonnx.formats import QuantizedTensor, encode_evx
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])
    graph = helper.make_model(helper.make_graph([helper.make_node("Mul", ["x", "w"], ["y"])], "g", [x], [y]))
    evx = tmp_path / "m.evx"
    evx.write_bytes(encode_evx(graph, [QuantizedTensor.raw("w", np.arange(3, dtype=np.float32))]))
    out = _cli_without_search(["decode", str(evx), "-o", str(tmp_path / "m.onnx")])
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "m.onnx").is_file()
    out = _cli_without_search(["inspect", str(evx)])
    assert out.returncode == 0 and "w" in out.stdout, out.stderr


def test_search_commands_name_the_extra_to_install(tmp_path):
    for args in (["compress", "m.onnx", "-o", str(tmp_path / "o.evx")], ["eval", "m.onnx"]):
        out = _cli_without_search(args)
        assert out.returncode == 2, out.stderr
        assert "evonnx[cpu]" in out.stderr and "evonnx[gpu]" in out.stderr and "Traceback" not in out.stderr
        assert not (tmp_path / "o.evx").exists()

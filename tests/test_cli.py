"""The CLI: results on good input; one clear line and exit code 2 on bad input."""
import json
import subprocess
import sys

import numpy as np
import onnx
import pytest

import corpus
from cli import evonnx


@pytest.fixture
def mlp_path(tmp_path):
    path = tmp_path / "mlp.onnx"
    onnx.save_model(corpus.mlp(), str(path))
    return path


def test_eval_prints_metrics_and_provider(mlp_path, tmp_path):
    calib = tmp_path / "calib.npz"
    np.savez(calib, x=np.random.default_rng(0).standard_normal((30, 8)).astype(np.float32), labels=np.zeros(30, int))
    result = evonnx("eval", mlp_path, "--calib", calib, "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["provider"] == "CPUExecutionProvider" and summary["samples"] == 30
    assert summary["outputs"][0]["kl"] == pytest.approx(0, abs=1e-9) and summary["outputs"][0]["accuracy"] is not None
    assert result.stderr == ""


def test_eval_against_teacher(mlp_path, tmp_path):
    other = tmp_path / "other.onnx"
    onnx.save_model(corpus.mlp(seed=1), str(other))
    result = evonnx("eval", other, "--against", mlp_path, "--samples", "16")
    assert result.returncode == 0, result.stderr
    assert "provider   CPUExecutionProvider" in result.stdout and "teacher" in result.stdout
    assert "task       agreement drop" in result.stdout  # another model: its top-1 differs somewhere
    result = evonnx("eval", other, "--against", mlp_path, "--samples", "16", "--metric", "cosine", "--json")
    task = json.loads(result.stdout)["task"]
    assert task["metric"] == "cosine" and task["n"] == 16 and task["points"] > 0


def _bad_inputs(tmp_path, mlp_path):
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x08\x07garbage\xff\xff")
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(corpus.mlp(d_in=64, hidden=64).SerializeToString()[:700])
    ext = tmp_path / "ext.onnx"
    onnx.save_model(corpus.mlp(), str(ext), save_as_external_data=True, location="ext.bin", size_threshold=0)
    (tmp_path / "ext.bin").unlink()
    int8 = tmp_path / "int8.onnx"
    onnx.save_model(corpus.int8_parts_only(), str(int8))
    new_ir = tmp_path / "new_ir.onnx"
    onnx.save_model(corpus.too_new_ir(), str(new_ir))
    calib = tmp_path / "wrong.npz"
    np.savez(calib, y=np.ones((3, 8), np.float32))
    return {
        "garbage": ([garbage], "garbage.onnx: not an ONNX model"),
        "truncated": ([truncated], "truncated.onnx: not an ONNX model or truncated"),
        "missing file": ([tmp_path / "nope.onnx"], "nope.onnx: no such file"),
        "external data": ([ext], "external data file 'ext.bin' for tensor"),
        "no float weights": ([int8], "no float weights"),
        "IR too new": ([new_ir], "cannot run this model (IR 99"),
        "calib names": ([mlp_path, "--calib", calib], "wrong.npz: array 'y' is not a model input"),
        "input shape": ([mlp_path, "--input-shape", "x:abc"], "expected NAME:DIMS"),
    }


def test_bad_inputs_exit_2_with_one_line(tmp_path, mlp_path):
    for case, (args, message) in _bad_inputs(tmp_path, mlp_path).items():
        result = evonnx("eval", *args)
        assert result.returncode == 2, (case, result.stderr)
        assert message in result.stderr, (case, result.stderr)
        assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1, (case, result.stderr)


def test_debug_shows_the_traceback(tmp_path):
    result = evonnx("--debug", "eval", tmp_path / "nope.onnx")
    assert result.returncode == 2 and "Traceback" in result.stderr


@pytest.mark.parametrize("option,value,message", [("--time-limit", "-5", "--time-limit must be a positive"),
                                                  ("--time-limit", "0", "--time-limit must be a positive"),
                                                  ("--max-drop", "-1", "--max-drop must be"),
                                                  ("--max-drop", "nan", "--max-drop must be"),
                                                  ("--holdout", "1", "--holdout must be"),
                                                  ("--metric", "bleu", "--metric 'bleu'"),
                                                  ("--metric", "ctc", "[N, T, C]"),
                                                  ("--samples", "0", "--samples must be at least 1")])
def test_out_of_range_options_are_refused(tmp_path, option, value, message):
    model = tmp_path / "m.onnx"
    onnx.save_model(corpus.mlp(), str(model))
    out = subprocess.run([sys.executable, "-m", "evonnx", "compress", str(model), "-o", str(tmp_path / "m.evx"),
                          "--synthetic-ok", option, value], capture_output=True, text=True)
    assert out.returncode == 2 and message in out.stderr and "Traceback" not in out.stderr
    assert not (tmp_path / "m.evx").exists()


def test_a_model_that_loads_but_cannot_run_is_one_line(tmp_path):
    from onnx import TensorProto, helper, numpy_helper
    w = numpy_helper.from_array(np.ones((8, 4), np.float32), "w")
    shape = numpy_helper.from_array(np.array([3, 5], np.int64), "bad_shape")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["h"], name="mm"),
                               helper.make_node("Reshape", ["h", "bad_shape"], ["y"], name="reshape_to_3x5")],
                              "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [w, shape])
    model = tmp_path / "bad.onnx"
    onnx.save_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), str(model))
    out = subprocess.run([sys.executable, "-m", "evonnx", "compress", str(model), "-o", str(tmp_path / "b.evx"),
                          "--samples", "4", "--synthetic-ok"], capture_output=True, text=True)
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    assert "failed running the model" in out.stderr and "reshape_to_3x5" in out.stderr
    assert not (tmp_path / "b.evx").exists()


def test_sigterm_unwinds_the_run_and_takes_its_temporary_files(tmp_path):
    """A pipeline's timeout sends SIGTERM: the run stops with 143 and one line, leaving neither an output nor the
    bit allocation's spilled Grams (here forced into files by a budget of 0) in TMPDIR."""
    import os
    import signal
    import time
    model, calib, tmp = tmp_path / "m.onnx", tmp_path / "c.npz", tmp_path / "tmp"
    onnx.save_model(corpus.mlp(d_in=256, hidden=256, classes=10), str(model))
    np.savez(calib, x=np.random.default_rng(0).standard_normal((512, 256)).astype(np.float32))
    tmp.mkdir()
    code = ("import sys; from evonnx.passes.quant import apply; apply.MIN_HELD = apply.HELD_SHARE = 0; "
            "from evonnx.tools.cli import main; sys.exit(main(sys.argv[1:]))")
    proc = subprocess.Popen([sys.executable, "-c", code, "compress", str(model), "-o", str(tmp_path / "m.evx"),
                             "--calib", str(calib), "--sparsity", "0"], env={**os.environ, "TMPDIR": str(tmp)},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not any(p.name.startswith("evonnx-spill-") and any(p.iterdir()) for p in tmp.iterdir()):
        assert proc.poll() is None and time.monotonic() < deadline, "the run ended before it spilled"
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143 and err.strip().splitlines()[-1] == "evonnx: terminated", err
    assert not [p for p in tmp.iterdir() if p.name.startswith("evonnx-")]  # (ONNX Runtime leaves a .ses there)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.npz", "m.onnx", "tmp"]  # no output, no partial

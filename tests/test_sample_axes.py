"""Classes of real-model failures, on small hand-built models: scalar and empty intermediates, inputs whose
samples are not on axis 0 (recurrent state) or that have none (a sample rate), weights that set shapes."""
import math

import numpy as np
import onnxruntime as ort
import pytest

import corpus
from cli import evonnx
from evonnx.errors import CalibrationError
from evonnx.passes.engine.calib import load_npz
from evonnx.passes.engine.samples import measured_axes, symbolic_axes
from evonnx.passes.pipeline import Pipeline
from evonnx.passes.state import load_state
from evonnx.runtime import decode
from evonnx.passes.compress import compress

LIGHT = [("directed-evolution", {"sparsity": 0.5, "steps": 2, "generations": 2, "population": 8}),
         ("quantize", {"bits": 6})]


def normal(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def quiet(**kwargs):
    return dict(progress=False, max_drop=math.inf, holdout=0, **kwargs)  # mechanics, not budgets


def save(tmp_path, name, model, **calib):
    import onnx
    path = tmp_path / f"{name}.onnx"
    onnx.save_model(model, str(path))
    np.savez(tmp_path / f"{name}.npz", **calib)
    return path, tmp_path / f"{name}.npz"


def run(model, feeds):
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)


def test_symbolic_axes_follow_the_shared_symbol():
    assert symbolic_axes({"x": ["N", 8], "state": [2, "N", 4], "sr": []}) == {"x": 0, "state": 1, "sr": None}
    assert symbolic_axes({"ids": ["batch", "seq"], "mask": ["batch", "seq"]}) == {"ids": 0, "mask": 0}
    # anonymous dims: the first dynamic one; a fixed input beside dynamic ones has no sample axis
    assert symbolic_axes({"x": [None, 8], "state": [2, None, 4], "sr": [1]}) == {"x": 0, "state": 1, "sr": None}
    assert symbolic_axes({"x": [1, 3, 8, 8]}) == {"x": 0}
    # extents are not the batch: a repeated '?' for height and width, a named width, a shared sequence length
    assert symbolic_axes({"x": [-1, 3, "?", "?"]}) == {"x": 0}
    assert symbolic_axes({"x": [1, 1, 64, "image_width"]}) == {"x": 0}
    assert symbolic_axes({"ids": [1, "sequence"], "mask": [1, "sequence"]}) == {"ids": 0, "mask": 0}
    assert symbolic_axes({"x": [None, 8], "state": [None, None, 4]}, {"state": 1}) == {"x": 0, "state": 1}


def test_measured_axes():
    one = [np.zeros((1, 5)), np.zeros((2, 1, 4)), np.zeros(()), np.zeros(3), np.zeros((1, 0)), np.zeros((7, 3))]
    two = [np.zeros((2, 5)), np.zeros((2, 2, 4)), np.zeros(()), np.zeros(3), np.zeros((2, 0)), np.zeros((14, 3))]
    assert measured_axes(one, two) == [0, 1, None, None, 0, 0]


def test_scalar_and_empty_intermediates_through_directed_evolution(tmp_path):
    teacher = corpus.scalar_intermediates()
    x = normal(300, 8)  # more than one probe batch of 256: 0-d values must not be concatenated
    model, calib = save(tmp_path, "scalars", teacher, x=x)
    result = compress(model, tmp_path / "s.evx", calib=calib, pipeline=Pipeline(LIGHT), **quiet())
    assert {r["name"] for r in result.layers if r["sparsity"] > 0.4} == {"w1", "w2"}
    (y,) = run(decode(tmp_path / "s.evx"), {"x": x})
    (t,) = run(teacher, {"x": x})
    cos = np.sum(y * t, 1) / np.linalg.norm(y, axis=1) / np.linalg.norm(t, axis=1)
    assert result.max_output_diff <= 1e-4 and np.mean(cos) > 0.5


def test_state_on_axis_1_and_a_scalar_rate(tmp_path):
    teacher = corpus.recurrent_state()
    feeds = {"x": normal(64, 8), "state": normal(2, 64, 4, seed=1) * 0.1, "sr": np.array(16000, np.int64)}
    model, calib = save(tmp_path, "vad", teacher, **feeds)
    data = load_npz(calib, load_state(model).model)
    assert data.axes == {"x": 0, "state": 1, "sr": None} and data.num_samples == 64
    assert data.feed(8, 12)["state"].shape == (2, 4, 4)
    result = compress(model, tmp_path / "v.evx", calib=calib, pipeline=Pipeline(LIGHT), **quiet())
    assert {r["name"] for r in result.layers if r["role"] == "matrix"} == {"w1", "w2"}
    assert result.sparsity == pytest.approx(0.5, abs=0.03)
    y, new_state = run(decode(tmp_path / "v.evx"), feeds)
    assert y.shape == (64, 3) and new_state.shape == (2, 64, 4)
    assert result.max_output_diff <= 1e-4
    out = evonnx("eval", model, "--calib", calib)
    assert out.returncode == 0, out.stderr


def test_sample_counts_that_disagree_name_the_override(tmp_path):
    teacher = corpus.recurrent_state(batch=None)  # anonymous dims: state [?, ?, 4] reads as samples on axis 0
    feeds = {"x": normal(64, 8), "state": normal(2, 64, 4, seed=1), "sr": np.array(16000, np.int64)}
    model, calib = save(tmp_path, "anon", teacher, **feeds)
    with pytest.raises(CalibrationError, match=r"state 2 \(axis 0\).*--batch-axis"):
        load_npz(calib, load_state(model).model)
    out = evonnx("compress", model, "-o", tmp_path / "a.evx", "--calib", calib, "--sparsity", "0.5", "--bits", "8",
                 "--max-drop", "inf")
    assert out.returncode == 2 and "--batch-axis" in out.stderr and "Traceback" not in out.stderr
    assert not (tmp_path / "a.evx").exists()
    out = evonnx("compress", model, "-o", tmp_path / "a.evx", "--calib", calib, "--batch-axis", "state:1",
                 "--sparsity", "0.5", "--bits", "8", "--quiet", "--max-drop", "inf")
    assert out.returncode == 0, out.stderr
    assert run(decode(tmp_path / "a.evx"), feeds)[1].shape == (2, 64, 4)


def test_weights_that_set_shapes_stay_exact_and_weight_chains_fold(tmp_path):
    teacher = corpus.shape_feeding_weights()
    state = load_state(teacher.SerializeToString())
    assert [n.op_type for n in state.model.graph.node] == ["Resize", "Conv"]  # Mul and Transpose folded
    (kernel,) = state.targets
    assert state.table[kernel].shape == (3, 2, 3, 3) and state.table[kernel].role == "conv"
    assert [s.name for s in state.table.skipped] == ["scales"] and "Resize" in state.table.skipped[0].reason
    x = normal(40, 2, 4, 4)
    model, calib = save(tmp_path, "resize", teacher, x=x)
    result = compress(model, tmp_path / "r.evx", calib=calib, **quiet(sparsity=0.5))
    assert "scales" in {s["name"] for s in result.skipped}
    (y,) = run(decode(tmp_path / "r.evx"), {"x": x})
    assert y.shape == (40, 3, 8, 8)


@pytest.mark.parametrize("build,feeds", [
    (corpus.scalar_intermediates, lambda: {"x": normal(1, 8)}),
    (corpus.recurrent_state, lambda: {"x": normal(1, 8), "state": normal(2, 1, 4, seed=1),
                                      "sr": np.array(16000, np.int64)}),
], ids=["scalars", "state"])
def test_one_calibration_sample(tmp_path, build, feeds):
    teacher, data = build(), feeds()
    model, calib = save(tmp_path, "one", teacher, **data)
    result = compress(model, tmp_path / "one.evx", calib=calib, pipeline=Pipeline(LIGHT), **quiet())
    assert result.max_output_diff <= 1e-4
    assert [o.shape for o in run(decode(tmp_path / "one.evx"), data)] == [o.shape for o in run(teacher, data)]


def test_recurrent_weights_are_targets_and_pruned(tmp_path):
    teacher = corpus.lstm()
    table = load_state(teacher.SerializeToString()).table
    assert {n: table[n].role for n in ("W", "R", "B")} == {"W": "matrix", "R": "matrix", "B": "bias"}
    x = normal(5, 48, 6)  # time-major: the samples are on axis 1
    model, calib = save(tmp_path, "lstm", teacher, x=x)
    result = compress(model, tmp_path / "l.evx", calib=calib, pipeline=Pipeline(LIGHT), **quiet())
    rows = {r["name"]: r for r in result.layers}
    assert rows["W"]["sparsity"] > 0 and rows["R"]["sparsity"] > 0 and result.max_output_diff <= 1e-4
    assert run(decode(tmp_path / "l.evx"), {"x": x})[0].shape == (48, 3)

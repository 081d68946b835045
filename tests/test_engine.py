"""The fitness engine: weights fed as inputs give the same outputs as baked weights; metrics; providers."""
import numpy as np
import onnxruntime as ort
import pytest

import corpus
from evonnx.errors import CalibrationError, EvonnxError, ModelError
from evonnx.passes.engine import providers
from evonnx.passes.engine.calib import CalibData, load_npz, synthetic
from evonnx.passes.engine.fitness import FitnessEngine, Runner
from evonnx.passes.engine.metrics import compare, kl_divergence
from evonnx.passes.state import load_state


def fresh_outputs(model, calib):
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, calib.inputs)


@pytest.mark.parametrize("build", [corpus.mlp, corpus.conv_net, corpus.if_subgraph, corpus.two_in_two_out])
def test_candidate_outputs_equal_a_freshly_built_model(build):
    state = load_state(build().SerializeToString())
    calib = synthetic(state.model, 40, seed=1)
    if "flag" in calib.inputs:
        calib.inputs["flag"] = np.array(True)
    engine = FitnessEngine(state.model, calib, state.targets, device="cpu", batch_size=16, held=state.held)
    rng = np.random.default_rng(0)
    candidate = {n: rng.standard_normal(state.table[n].shape).astype(np.float32) for n in state.targets}
    got = engine.outputs(candidate)
    want = fresh_outputs(state.replace(weights=candidate).to_onnx(), calib)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-6, atol=1e-6)


def test_graph_optimisations_do_not_fold_fed_weights():
    """Two different candidates must give two different outputs (ORT must not constant-fold the inputs)."""
    state = load_state(corpus.conv_net().SerializeToString())
    engine = FitnessEngine(state.model, synthetic(state.model, 8), state.targets, device="cpu", held=state.held)
    zero_conv = {"k": np.zeros((4, 1, 3, 3), np.float32)}
    out_zero, out_orig = engine.outputs(zero_conv)[0], engine.outputs({})[0]
    assert not np.allclose(out_zero, out_orig)
    np.testing.assert_allclose(out_orig, engine.teacher[0], rtol=1e-6, atol=1e-6)


def test_teacher_is_cached_and_unchanged_student_has_zero_fitness():
    state = load_state(corpus.mlp().SerializeToString())
    engine = FitnessEngine(state.model, synthetic(state.model, 32), state.targets, device="cpu", batch_size=10,
                           held=state.held)
    assert len(engine.batches) == 4 and engine.teacher[0].shape == (32, 4)
    assert engine.fitness([{}])[0] == pytest.approx(0.0, abs=1e-9)
    worse = engine.fitness([{"w1": state.original("w1") * 0.5}, {"w1": np.zeros((16, 8), np.float32)}])
    assert 0 < worse[0] < worse[1]


def test_multi_output_metrics_and_accuracy():
    state = load_state(corpus.two_in_two_out().SerializeToString())
    calib = synthetic(state.model, 20)
    calib.inputs["ids"] = np.random.default_rng(0).integers(0, 20, (20, 7))
    calib.labels = np.zeros(20, np.int64)
    engine = FitnessEngine(state.model, calib, state.targets, device="cpu", held=state.held)
    metrics = engine.evaluate([{"w2": np.zeros((6, 3), np.float32)}])[0]
    assert [o.name for o in metrics.outputs] == ["y1", "y2"]
    y1, y2 = metrics.outputs
    assert y1.kl == pytest.approx(0, abs=1e-9) and y1.top1 == 1.0 and y1.accuracy is not None
    assert y2.rel_mse == pytest.approx(1.0) and y2.top1 < 1.0


def test_metric_values():
    t = np.array([[2.0, 0.0], [0.0, 1.0]])
    s = np.array([[0.0, 2.0], [0.0, 1.0]])
    p = np.exp(2) / (1 + np.exp(2))
    expected = (p * np.log(p / (1 - p)) + (1 - p) * np.log((1 - p) / p)) / 2
    assert kl_divergence(t, s) == pytest.approx(expected)
    m = compare(["y"], [t], [s], labels=np.array([1, 1]))
    assert m.outputs[0].top1 == 0.5 and m.accuracy == 1.0 and m.outputs[0].cosine == pytest.approx(0.5)


def test_cpu_fallback_is_quiet_and_reported(capfd):
    if providers.cuda_usable():
        pytest.skip("CUDA is usable here")
    assert providers.resolve("auto") == ["CPUExecutionProvider"]
    with pytest.raises(EvonnxError, match="CUDA was requested"):
        providers.resolve("cuda")
    state = load_state(corpus.mlp().SerializeToString())
    engine = FitnessEngine(state.model, synthetic(state.model, 4), state.targets, device="auto", held=state.held)
    assert engine.provider == "CPUExecutionProvider"
    assert "libcu" not in capfd.readouterr().err


def test_session_threads_follow_the_environment(monkeypatch):
    monkeypatch.setenv("EVONNX_ORT_THREADS", "1")
    runner = Runner(corpus.mlp(), ["CPUExecutionProvider"])
    assert runner.session.get_session_options().intra_op_num_threads == 1
    monkeypatch.setenv("EVONNX_ORT_THREADS", "two")
    with pytest.raises(EvonnxError, match="EVONNX_ORT_THREADS='two'"):
        Runner(corpus.mlp(), ["CPUExecutionProvider"])


def test_unrunnable_ir_version_is_a_clear_error():
    model = corpus.too_new_ir()
    with pytest.raises(ModelError, match="cannot run this model .IR 99"):
        Runner(model, ["CPUExecutionProvider"], "new.onnx")


def test_fixed_batch_models_trim_calibration():
    model = corpus.mlp()
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 4
    state = load_state(model.SerializeToString())
    calib = CalibData({"x": np.ones((10, 8), np.float32)}, None, "test")
    with pytest.warns(UserWarning, match="8 of 10"):
        engine = FitnessEngine(state.model, calib, state.targets, device="cpu", held=state.held)
    assert engine.batch_size == 4 and engine.teacher[0].shape == (8, 4)


def test_npz_checks(tmp_path):
    model = corpus.mlp()
    good = tmp_path / "good.npz"
    np.savez(good, x=np.ones((5, 8), np.float32), labels=np.arange(5))
    data = load_npz(good, model)
    assert data.num_samples == 5 and list(data.labels) == [0, 1, 2, 3, 4]
    cases = {
        "name.npz": ({"z": np.ones((5, 8), np.float32)}, "array 'z' is not a model input"),
        "shape.npz": ({"x": np.ones((5, 7), np.float32)}, r"has shape \(5, 7\)"),
        "labels.npz": ({"x": np.ones((5, 8), np.float32), "labels": np.ones(4, np.int64)}, "one per sample"),
    }
    for name, (arrays, message) in cases.items():
        np.savez(tmp_path / name, **arrays)
        with pytest.raises(CalibrationError, match=message):
            load_npz(tmp_path / name, model)
    np.savez(tmp_path / "obj.npz", x=np.array([{"a": 1}], dtype=object))
    with pytest.raises(CalibrationError, match="obj.npz: not a readable .npz"):
        load_npz(tmp_path / "obj.npz", model)


def test_dynamic_dims_need_input_shape():
    model = corpus.mlp()
    model.graph.input[0].type.tensor_type.shape.dim[1].dim_param = "D"
    with pytest.raises(CalibrationError, match="--input-shape x:DIMS"):
        synthetic(model, 4)
    assert synthetic(model, 4, {"x": [1, 8]}).inputs["x"].shape == (4, 8)


def test_the_default_batch_is_bounded_by_the_memory_a_sample_takes(monkeypatch):
    """A model whose intermediates are large a sample (32 MiB here, a 1024 x 1024 U-Net ~400 MiB) runs its
    calibration in smaller batches by default: ONNX Runtime keeps a whole batch's working memory in its arena
    (the U-Net peaked at 13.0 GiB with all 8 samples a batch, 8.0 one at a time). An explicit batch is kept."""
    from onnx import TensorProto, helper, numpy_helper
    from evonnx.passes.engine import fitness
    rng = np.random.default_rng(0)
    w1 = numpy_helper.from_array(rng.standard_normal((32, 1, 3, 3)).astype(np.float32), "w1")
    w2 = numpy_helper.from_array(rng.standard_normal((1, 32, 3, 3)).astype(np.float32), "w2")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w1"], ["h"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["h"], ["r"]),
         helper.make_node("Conv", ["r", "w2"], ["y"], pads=[1, 1, 1, 1])], "big",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 512, 512])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [w1, w2])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    calib = CalibData({"x": rng.standard_normal((8, 1, 512, 512)).astype(np.float32)}, None, "big")
    assert FitnessEngine(model, calib, ["w1"], device="cpu").batch_size > 1  # several ~32 MiB in BATCH_BYTES
    monkeypatch.setattr(fitness, "BATCH_BYTES", 16 << 20)
    bounded = FitnessEngine(model, calib, ["w1"], device="cpu")
    assert bounded.batch_size == 1 and len(bounded.batches) == 8
    whole = FitnessEngine(model, calib, ["w1"], device="cpu", batch_size=8)  # asked for: kept
    assert whole.batch_size == 8
    np.testing.assert_allclose(bounded.teacher[0], whole.teacher[0], rtol=1e-4, atol=1e-4)

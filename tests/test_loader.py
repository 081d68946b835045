"""The loader on models that hold their weights the ways real models do."""
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

import corpus
from evonnx.errors import ModelError
from evonnx.passes.state import load_state
from evonnx.runtime.model_io import load_model, save_model
from evonnx.runtime.weights import set_weights


def run(model, feeds):
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)


def test_constant_node_weight_becomes_an_initializer():
    state = load_state(corpus.constant_weights().SerializeToString())
    info = state.table["cw"]
    assert (info.role, info.origin, info.channel_axis) == ("matrix", "constant", 1)
    assert not any(n.op_type == "Constant" for n in state.model.graph.node)
    x = np.ones((2, 8), np.float32)
    assert np.allclose(run(state.model, {"x": x})[0], run(corpus.constant_weights(), {"x": x})[0])


def test_if_subgraph_weights_are_found_and_changeable():
    state = load_state(corpus.if_subgraph().SerializeToString())
    names = state.targets
    assert len(names) == 2 and all(state.table[n].origin.startswith("subgraph:if/") for n in names)
    then_name = next(n for n in names if "then" in n)
    model = set_weights(state.model, {then_name: np.zeros(state.table[then_name].shape, np.float32)})
    onnx.checker.check_model(model, full_check=True)
    x = np.ones((3, 8), np.float32)
    assert np.all(run(model, {"x": x, "flag": np.array(True)})[0] == 0)
    original = run(corpus.if_subgraph(), {"x": x, "flag": np.array(False)})[0]
    assert np.allclose(run(model, {"x": x, "flag": np.array(False)})[0], original)


def test_shared_weight_is_one_weight_with_two_consumers():
    table = load_state(corpus.shared_weight().SerializeToString()).table
    assert list(table.weights) == ["w"]
    assert sorted(c.node for c in table["w"].consumers) == ["mm1", "mm2"]


def test_int8_parts_are_skipped_and_reported():
    table = load_state(corpus.int8_parts().SerializeToString()).table
    assert [w.name for w in table.targets] == ["wf"]
    assert {s.name for s in table.skipped} == {"wq", "wq_scale", "wq_zp"}


def test_roles_and_channel_axes():
    table = load_state(corpus.conv_net().SerializeToString()).table
    assert (table["k"].role, table["k"].channel_axis) == ("conv", 0)
    assert (table["w"].role, table["w"].channel_axis) == ("matrix", 1)
    assert table["kb"].role == "bias" and table["b"].role == "bias"
    mlp = load_state(corpus.mlp().SerializeToString()).table
    assert (mlp["w1"].role, mlp["w1"].channel_axis) == ("matrix", 0)  # Gemm transB=1
    emb = load_state(corpus.two_in_two_out().SerializeToString()).table
    assert emb["emb"].role == "embedding"


def test_external_data_round_trip(tmp_path):
    path = tmp_path / "m.onnx"
    onnx.save_model(corpus.mlp(d_in=64, hidden=64), str(path), save_as_external_data=True,
                    location="m.data", size_threshold=0)
    assert (tmp_path / "m.data").exists()
    state = load_state(path)
    assert np.array_equal(state.original("w1"), numpy_helper.to_array(corpus.mlp(d_in=64, hidden=64).graph.initializer[0]))


def test_missing_external_data_is_named(tmp_path):
    path = tmp_path / "m.onnx"
    onnx.save_model(corpus.mlp(), str(path), save_as_external_data=True, location="w.bin", size_threshold=0)
    (tmp_path / "w.bin").unlink()
    with pytest.raises(ModelError, match=r"m\.onnx.*external data file 'w\.bin'.*missing"):
        load_model(path)


def test_written_back_model_is_valid_and_runs(tmp_path):
    state = load_state(corpus.mlp().SerializeToString())
    new = state.replace(weights={"w1": np.zeros((16, 8), np.float32)}).to_onnx()
    onnx.checker.check_model(new, full_check=True)
    out = save_model(new, tmp_path / "out.onnx")
    y = run(onnx.load(str(out)), {"x": np.ones((2, 8), np.float32)})[0]
    b1 = np.maximum(state.original("b1"), 0)
    assert np.allclose(y, b1 @ state.original("w2") + state.original("b2"), atol=1e-5)
    assert not list(tmp_path.glob("*.tmp"))


def test_models_beyond_the_protobuf_limit_are_written_and_run_through_external_data(tmp_path, monkeypatch):
    """The class of models over 2 GiB, with the limit lowered: decode's writer goes through a file with
    external data; the engine's sessions and shape inference take a weight-free copy whatever the size."""
    from evonnx.passes.engine.fitness import Runner
    from evonnx.runtime import model_io
    model = corpus.mlp(d_in=64, hidden=64)
    x = {"x": np.ones((2, 64), np.float32)}
    monkeypatch.setattr(model_io, "_PROTO_LIMIT", model.ByteSize() // 2)
    out = save_model(model, tmp_path / "big.onnx")
    assert (tmp_path / "big.onnx.data").stat().st_size > model.ByteSize() // 2
    assert np.array_equal(run(onnx.load(str(out)), x)[0], run(model, x)[0])
    stub, held = model_io.weight_free(model)
    assert stub.ByteSize() < 2048 and sum(a.nbytes for a in held.values()) > 0.9 * model.ByteSize()
    assert all(np.array_equal(a, numpy_helper.to_array(t)) for t in model.graph.initializer
               for a in [held.get(t.name)] if a is not None)
    assert np.array_equal(Runner(model, ["CPUExecutionProvider"]).run(x)[0], run(model, x)[0])


def test_sessions_from_a_weight_free_copy_keep_every_tensor_type_and_shape_constant():
    """Held tensors of several types (float16 weights, int64 gather indices) go to the session as values;
    a shape tensor stays inline, so shape inference of the copy still types the Reshape's output."""
    from evonnx.passes.engine.fitness import Runner
    from evonnx.passes.sparsity.graph import elem_types
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((64, 32)).astype(np.float16), "w"),
             numpy_helper.from_array(rng.integers(0, 32, 300).astype(np.int64), "idx"),
             numpy_helper.from_array(np.array([-1, 10, 2], np.int64), "shape")]
    nodes = [onnx.helper.make_node("Cast", ["x"], ["xh"], to=onnx.TensorProto.FLOAT16),
             onnx.helper.make_node("MatMul", ["xh", "w"], ["y"]),
             onnx.helper.make_node("Gather", ["y", "idx"], ["g"], axis=1),
             onnx.helper.make_node("Reshape", ["g", "shape"], ["r"]), onnx.helper.make_node("Relu", ["r"], ["o"])]
    graph = onnx.helper.make_graph(nodes, "g", [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [4, 64])],
                                   [onnx.helper.make_tensor_value_info("o", onnx.TensorProto.FLOAT16, None)], inits)
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)], ir_version=8)
    from evonnx.runtime import model_io
    stub, held = model_io.weight_free(model)
    assert set(held) == {"w", "idx"} and held["w"].dtype == np.float16
    assert elem_types(model)["r"] == (onnx.TensorProto.FLOAT16, 3)
    x = {"x": rng.standard_normal((4, 64)).astype(np.float32)}
    assert np.array_equal(Runner(model, ["CPUExecutionProvider"]).run(x)[0], run(model, x)[0])


def test_sessions_take_other_weights_without_a_model_copy_and_may_move_the_model_out():
    """A session given other values for some initializers equals one of the model with them set; with
    `take`, the source model's large tensors are moved out; a wrong shape or name is refused naming it."""
    from evonnx.passes.engine.fitness import Runner
    model = corpus.mlp(d_in=64, hidden=64)
    x = {"x": np.ones((2, 64), np.float32)}
    w1 = numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == "w1")) * 0.5
    want = run(set_weights(model, {"w1": w1}), x)[0]
    assert np.array_equal(Runner(model, ["CPUExecutionProvider"], weights={"w1": w1}).run(x)[0], want)
    assert not np.array_equal(run(model, x)[0], want)  # the model itself is unchanged
    with pytest.raises(ModelError, match="'w1': new shape"):
        Runner(model, ["CPUExecutionProvider"], weights={"w1": w1[:, :32]})
    with pytest.raises(ModelError, match="nope"):
        Runner(model, ["CPUExecutionProvider"], weights={"nope": w1})
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    assert np.array_equal(Runner(copy, ["CPUExecutionProvider"], take=True).run(x)[0], run(model, x)[0])
    assert not copy.graph.initializer[0].raw_data  # moved out into the session


def test_freed_memory_goes_back_to_the_system_on_glibc():
    import platform
    from evonnx.passes.engine.heap import return_freed_memory
    assert return_freed_memory() == (platform.libc_ver()[0] == "glibc")


@pytest.mark.parametrize("data, message", [
    (b"", "empty file"),
    (b"\x00\x01garbage that is not protobuf\xff\xff\xff", "not an ONNX model"),
])
def test_bad_bytes_are_refused(tmp_path, data, message):
    path = tmp_path / "bad.onnx"
    path.write_bytes(data)
    with pytest.raises(ModelError, match=f"bad.onnx: {message}"):
        load_model(path)


def test_truncated_file_is_refused(tmp_path):
    data = corpus.mlp(d_in=64, hidden=64).SerializeToString()
    path = tmp_path / "cut.onnx"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelError, match="cut.onnx"):
        load_model(path)


def test_model_without_float_weights_is_refused():
    with pytest.raises(ModelError, match="no float weights"):
        load_state(corpus.int8_parts_only().SerializeToString(), label="q.onnx")


def test_scalar_weight_keeps_its_shape():
    model = corpus.mlp()
    model.graph.initializer.append(numpy_helper.from_array(np.array(2.0, np.float32), "s"))
    new = set_weights(model, {"s": np.array(3.0, np.float32)})
    tensor = next(t for t in new.graph.initializer if t.name == "s")
    assert list(tensor.dims) == [] and numpy_helper.to_array(tensor) == 3.0


def test_state_holds_its_float_weights_once(tmp_path):
    """load_state keeps the graph weight-free: the table's float weights are references whose values the state
    holds (read-only, one copy shared by every derived state); sessions take them by name, a session without
    them is refused naming the weight, and to_onnx() is a self-contained model again."""
    from evonnx.passes.engine.fitness import Runner
    from evonnx.runtime.model_io import is_held

    model = corpus.mlp(d_in=64, hidden=64)
    state = load_state(model.SerializeToString())
    held = {t.name for t in state.model.graph.initializer if is_held(t)}
    assert held == set(state.held) and {"w1", "w2"} <= held
    assert state.model.ByteSize() < 4096 < sum(a.nbytes for a in state.held.values())
    assert not state.original("w1").flags.writeable
    assert state.replace(weights={"w1": np.zeros((64, 64), np.float32)}).held is state.held
    x = {"x": np.random.default_rng(0).standard_normal((3, 64)).astype(np.float32)}
    want = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, x)[0]
    np.testing.assert_array_equal(Runner(state.model, ["CPUExecutionProvider"], held=state.held).run(x)[0], want)
    with pytest.raises(ModelError, match="held outside the graph"):
        Runner(state.model, ["CPUExecutionProvider"])
    full = state.to_onnx()
    assert not any(is_held(t) for t in full.graph.initializer)
    got = ort.InferenceSession(full.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, x)[0]
    np.testing.assert_array_equal(got, want)


def test_saved_model_reads_back_equal(tmp_path):
    """save_model writes a model under 2 GiB one initializer at a time (its graph field twice, merged on
    parsing): onnx and ONNX Runtime read back the same model, initializers in order, and an initializer-free
    model is written as it is."""
    model = corpus.conv_net()
    model.graph.initializer.append(numpy_helper.from_array(np.arange(300, dtype=np.float32), "big_unused"))
    path = save_model(model, tmp_path / "m.onnx")
    back = onnx.load(str(path))
    assert back == model and [t.name for t in back.graph.initializer] == [t.name for t in model.graph.initializer]
    x = {"x": np.random.default_rng(0).standard_normal((2, 1, 8, 8)).astype(np.float32)}
    np.testing.assert_array_equal(run(onnx.load(str(path)), x)[0], run(model, x)[0])
    bare = onnx.helper.make_model(onnx.helper.make_graph([onnx.helper.make_node("Relu", ["a"], ["b"])], "g",
                                  [onnx.helper.make_tensor_value_info("a", onnx.TensorProto.FLOAT, [2])],
                                  [onnx.helper.make_tensor_value_info("b", onnx.TensorProto.FLOAT, [2])]))
    assert onnx.load(str(save_model(bare, tmp_path / "bare.onnx"))) == bare

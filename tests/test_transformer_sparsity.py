"""Directed Evolution on transformer-shaped layers: tokens as rows, padding left out by the attention mask,
tokens folded into a fixed batch, embedding tables left unpruned."""
import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from evonnx.passes.base import PassContext, get_pass
from evonnx.passes.engine.calib import CalibData
from evonnx.passes.sparsity import targets as tg
from evonnx.passes.sparsity import tokens
from evonnx.passes.sparsity.common import setup
from evonnx.passes.state import load_state

T, F, H, O = 8, 12, 24, 6
SMALL = dict(steps=2, population=8, generations=2, fitness_samples=32, refit_samples=32, chunk=0.2)


def normal(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def const(name, value):
    return numpy_helper.from_array(np.asarray(value), name)


def token_mlp(fixed=False):
    """x [batch, T, F] -> MatMul/Relu/MatMul -> [batch, T, O], plus 0.01 x the mask at each token. `fixed`: batch
    1, an additive float mask [1, 1, 1, T] and the tokens folded into rows ([T, F] Gemms between Reshapes), as
    exported BERTs are; else a dynamic batch and an int mask [batch, T]."""
    batch = 1 if fixed else "batch"
    mask = (helper.make_tensor_value_info("attention_mask", TensorProto.FLOAT, [1, 1, 1, T]) if fixed
            else helper.make_tensor_value_info("attention_mask", TensorProto.INT64, [batch, T]))
    inits = [const("w1", normal(F, H, seed=1) / np.float32(np.sqrt(F))),
             const("b1", normal(H, seed=2) * np.float32(0.1)),
             const("w2", normal(H, O, seed=3) / np.float32(np.sqrt(H))), const("rows", np.array([-1, F], np.int64)),
             const("tokens", np.array([-1, T, O], np.int64)), const("gate", np.array([-1, T, 1], np.int64)),
             const("scale", np.array(0.01, np.float32))]
    if fixed:
        body = [helper.make_node("Reshape", ["x", "rows"], ["x2"]),
                helper.make_node("Gemm", ["x2", "w1", "b1"], ["a"]),
                helper.make_node("Relu", ["a"], ["h"]),
                helper.make_node("Gemm", ["h", "w2"], ["y2"]),
                helper.make_node("Reshape", ["y2", "tokens"], ["y"]),
                helper.make_node("Reshape", ["attention_mask", "gate"], ["m"])]
    else:
        body = [helper.make_node("MatMul", ["x", "w1"], ["a0"]),
                helper.make_node("Add", ["a0", "b1"], ["a"]),
                helper.make_node("Relu", ["a"], ["h"]),
                helper.make_node("MatMul", ["h", "w2"], ["y"]),
                helper.make_node("Cast", ["attention_mask"], ["mf"], to=TensorProto.FLOAT),
                helper.make_node("Reshape", ["mf", "gate"], ["m"])]
    body += [helper.make_node("Mul", ["m", "scale"], ["ms"]), helper.make_node("Add", ["y", "ms"], ["out"])]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, T, F])
    out = helper.make_tensor_value_info("out", TensorProto.FLOAT, [batch, T, O])
    graph = helper.make_graph(body, "token_mlp", [x, mask], [out], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)


def token_calib(n=32, fixed=False, seed=0, pad_seed=None):
    """n sequences of 2..T real tokens, padded; `pad_seed` redraws the activations at the pads."""
    lengths = np.random.default_rng(seed).integers(2, T + 1, n)
    real = np.arange(T)[None] < lengths[:, None]
    x = normal(n, T, F, seed=seed + 10)
    if pad_seed is not None:
        x = np.where(real[..., None], x, normal(n, T, F, seed=pad_seed) * 5)
    mask = (((real - 1) * 30.0).astype(np.float32)[:, None, None, :] if fixed else real.astype(np.int64))
    return CalibData({"x": x, "attention_mask": mask}, None, "tokens")


def run_de(model, calib, **config):
    state = load_state(model.SerializeToString())
    ctx = PassContext(calib, device="cpu", seed=0, progress=False)
    return get_pass("directed-evolution")(**{**SMALL, **config}).run(state, ctx)


@pytest.mark.parametrize("fixed", [False, True], ids=["int-mask", "additive-mask-fixed-batch"])
def test_values_at_padded_tokens_change_nothing(fixed):
    a = run_de(token_mlp(fixed), token_calib(fixed=fixed), sparsity=0.6)
    b = run_de(token_mlp(fixed), token_calib(fixed=fixed, pad_seed=99), sparsity=0.6)
    for name in ("w1", "b1", "w2"):
        assert np.array_equal(a.current(name), b.current(name)), name
    assert a.history[-1]["fitness"] == b.history[-1]["fitness"]


def test_tokens_folded_into_a_fixed_batch_are_rows_of_every_sample():
    calib = token_calib(n=16, fixed=True)
    state = load_state(token_mlp(fixed=True).SerializeToString())
    layers, ev = setup(state, PassContext(calib, device="cpu", progress=False), get_pass("directed-evolution")(
        sparsity=0.5).config)
    w1 = next(l for l in layers if l.weight == "w1")
    assert (ev.axes["x2"], ev.per["x2"]) == (0, T) and (ev.axes["out"], ev.per["out"]) == (0, 1)
    x, t = ev.visit(w1, state).refit_data()
    real = calib.inputs["attention_mask"][:, 0, 0] == 0
    assert len(x) == len(t) == real.sum()
    assert np.array_equal(x, calib.inputs["x"][real])  # the real tokens of every sample, in order


def test_directed_evolution_reaches_its_target_on_token_activations():
    calib = token_calib(n=64)
    out = run_de(token_mlp(), calib, layer_sparsity={"w1": 0.75, "w2": 0.5}, steps=3, generations=3)
    assert np.count_nonzero(out.current("w1") == 0) == tg.zero_count(F * H, 0.75)
    assert np.count_nonzero(out.current("w2") == 0) == tg.zero_count(H * O, 0.5)
    blind = run_de(token_mlp(), calib, layer_sparsity={"w1": 0.75, "w2": 0.5}, refit=False, steps=3, generations=3)
    assert out.history[-1]["fitness"] < 0.75 * blind.history[-1]["fitness"]  # the re-fit on token rows pays


def embedding_model(vocab=50, dim=8):
    inits = [const("table", normal(vocab, dim, seed=1)), const("w", normal(dim, O, seed=2))]
    nodes = [helper.make_node("Gather", ["table", "input_ids"], ["e"]), helper.make_node("MatMul", ["e", "w"], ["out"])]
    ids = helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", T])
    out = helper.make_tensor_value_info("out", TensorProto.FLOAT, ["batch", T, O])
    graph = helper.make_graph(nodes, "embed", [ids], [out], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)


def test_embedding_tables_are_not_pruned():
    model = embedding_model()
    ids = np.random.default_rng(0).integers(0, 20, (32, T))  # rows 20.. are never touched
    out = run_de(model, CalibData({"input_ids": ids}, None, "ids"), sparsity=0.5)
    assert np.array_equal(out.current("table"), numpy_helper.to_array(model.graph.initializer[0]))
    assert np.count_nonzero(out.current("w") == 0) == tg.zero_count(8 * O, 0.5)


def test_mask_input_detection_and_row_layouts():
    ids = np.ones((2, 4), np.int64)
    real = np.array([[1, 1, 0, 0], [1, 1, 1, 0]])
    axes = {"input_ids": 0, "attention_mask": 0, "token_type_ids": 0}
    int_mask = {"input_ids": ids, "token_type_ids": np.zeros_like(ids), "attention_mask": real}
    assert tokens.mask_input(int_mask, axes) == "attention_mask"
    additive = {"input_ids": ids, "attention_mask": ((real - 1) * 1e4).astype(np.float32)[:, None, None]}
    assert np.array_equal(tokens.token_keep(additive, axes), real.astype(bool))
    assert tokens.token_keep({"input_ids": ids, "token_type_ids": np.zeros_like(ids)}, axes) is None
    no_pads = {"attention_mask": np.zeros((2, 1, 1, 4), np.float32)}
    assert tokens.token_keep(no_pads, axes).all()
    keep = real.astype(bool)
    heads = tokens.row_keep((2, 3, 4), 0, 1, keep).reshape(2, 3, 4)  # [batch, heads, tokens, d]
    assert np.array_equal(heads, np.repeat(keep[:, None], 3, axis=1))
    assert np.array_equal(tokens.row_keep((8,), 0, 4, keep), keep.ravel())  # [batch*tokens, d]
    assert tokens.row_keep((2, 5), 0, 1, keep) is None  # no token axis: every row counts


def test_layers_find_their_node_when_a_name_looks_like_another_node_s_index_name():
    from evonnx.passes.sparsity.layers import analyse
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"], name="MatMul_1"),
             helper.make_node("MatMul", ["h", "w2"], ["y"], name="MatMul_0")]
    graph = helper.make_graph(nodes, "named", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", F])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", O])],
                              [const("w1", normal(F, H)), const("w2", normal(H, O))])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)
    layers = {l.weight: l for l in analyse(load_state(model.SerializeToString()), ["w1", "w2"])}
    assert (layers["w1"].x, layers["w2"].x) == ("x", "h")

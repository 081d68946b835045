"""Transformer ops in the ONNX -> torch conversion: each on a small hand-built graph equals ONNX Runtime's
output (dtype, shape, values to 1e-5), shape subgraphs follow the token length, contrib fusions we do not
implement are refused by name, and a corpus transformer converts whole."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

torch = pytest.importorskip("torch")

from evonnx.errors import EvonnxError  # noqa: E402
from evonnx.passes.torchnet.convert import OnnxModule, run_numpy  # noqa: E402

torch.set_num_threads(1)

RNG = np.random.default_rng(0)
FLOAT_TYPE = helper.make_tensor_type_proto(TensorProto.FLOAT, None)


def f32(*shape, positive=False):
    x = RNG.standard_normal(shape).astype(np.float32)
    return np.abs(x) + 0.1 if positive else x


def i64(*values):
    return np.array(values, np.int64)


def make(nodes, feeds, inits=None, opset=17, outputs=("y",)):
    """A model of `nodes` with `feeds` as inputs of symbolic shape; output types from shape inference
    (float for com.microsoft ops, which it does not know)."""
    inputs = [helper.make_tensor_value_info(k, helper.np_dtype_to_tensor_dtype(v.dtype),
                                            [f"{k}{i}" for i in range(v.ndim)]) for k, v in feeds.items()]
    graph = helper.make_graph(nodes, "g", inputs, [helper.make_value_info(o, onnx.TypeProto()) for o in outputs],
                              [numpy_helper.from_array(np.asarray(v), k) for k, v in (inits or {}).items()])
    model = helper.make_model(graph, ir_version=10, opset_imports=[helper.make_opsetid("", opset),
                                                                   helper.make_opsetid("com.microsoft", 1)])
    inferred = onnx.shape_inference.infer_shapes(model).graph
    types = {v.name: v.type for v in [*inferred.value_info, *inferred.output] if v.type.tensor_type.elem_type}
    for o in model.graph.output:
        o.type.CopyFrom(types.get(o.name, FLOAT_TYPE))
    return model


def assert_matches_ort(model, feeds, module=None):
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    expected = sess.run(None, feeds)
    module = module or OnnxModule(model)
    with torch.no_grad():
        got = [t.numpy() for t in module(*[torch.from_numpy(np.asarray(feeds[k])) for k in module.input_names])]
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        assert g.dtype == e.dtype and g.shape == e.shape, (g.dtype, e.dtype, g.shape, e.shape)
        finite = np.isfinite(e)
        scale = max(1.0, float(np.abs(e[finite]).max(initial=0)))
        np.testing.assert_allclose(g, e, rtol=1e-5, atol=1e-5 * scale)


def node(op_type, inputs, outputs=("y",), **attrs):
    return helper.make_node(op_type, list(inputs), list(outputs), **attrs)


def ms(op_type, inputs, **attrs):
    return helper.make_node(op_type, list(inputs), ["y"], domain="com.microsoft", **attrs)


def decomposed_layer_norm(opset):
    axes = {"axes": [-1]} if opset < 18 else {}
    mean_in = [] if opset < 18 else ["ax"]
    return [node("ReduceMean", ["x", *mean_in], ["m"], **axes), node("Sub", ["x", "m"], ["d"]),
            node("Pow", ["d", "two"], ["d2"]), node("ReduceMean", ["d2", *mean_in], ["v"], **axes),
            node("Add", ["v", "eps"], ["ve"]), node("Sqrt", ["ve"], ["s"]), node("Div", ["d", "s"], ["n"]),
            node("Mul", ["n", "g"], ["ng"]), node("Add", ["ng", "b"])]


def reduce_case(op_type, opset):
    as_input = opset >= 18 or (op_type == "ReduceSum" and opset >= 13)
    n = node(op_type, ["x", "ax"] if as_input else ["x"], **({} if as_input else {"axes": [1, -1]}), keepdims=0)
    return [n], {"x": f32(2, 3, 4)}, {"ax": i64(1, -1)} if as_input else {}, opset


def split_case(opset, how):
    outs = ["y0", "y1", "y2"]
    if how == "attribute":
        n = node("Split", ["x"], outs, axis=1, split=[1, 2, 3])
    elif how == "input":
        n = node("Split", ["x", "s"], outs, axis=1)
    elif how == "equal":
        n = node("Split", ["x"], outs, axis=-1)
    else:
        n = node("Split", ["x"], outs, axis=1, num_outputs=3)
    x = f32(2, 6 if how != "num_outputs" else 8, 6)
    return [n], {"x": x}, {"s": i64(1, 2, 3)} if how == "input" else {}, opset, outs


def pad_case(mode, opset):
    x = f32(2, 3, 4, 5)
    if opset < 11:
        return [node("Pad", ["x"], mode=mode, pads=[0, 1, 2, 0, 0, 2, 1, 3], value=1.5)], {"x": x}, {}, opset
    if opset >= 18:
        return ([node("Pad", ["x", "p", "", "ax"], mode=mode)], {"x": x}, {"p": i64(2, 1, 1, 2), "ax": i64(-1, 1)},
                opset)
    pads = i64(0, 1, 2, -1, 0, 2, 1, 3) if mode == "constant" else i64(0, 1, 2, 0, 1, 2, 1, 3)
    return [node("Pad", ["x", "p", "v"], mode=mode)], {"x": x}, {"p": pads, "v": np.float32(-2.0)}, opset


def resize_case(mode, coord, by, nearest="round_prefer_floor", opset=13):
    x = f32(2, 3, 5, 6)
    inputs, inits = ["x", "", "s"] if by == "scales" else ["x", "", "", "z"], {}
    if by == "scales":
        inits["s"] = np.array([1, 1, 2.0, 0.6] if mode != "nearest" else [1, 0.5, 2.5, 0.6], np.float32)
    else:
        inits["z"] = i64(2, 3, 8, 4) if mode != "nearest" else i64(2, 5, 3, 11)
    n = node("Resize", inputs, mode=mode, coordinate_transformation_mode=coord, nearest_mode=nearest)
    return [n], {"x": x}, inits, opset


def cast_case():
    x = f32(3, 4) * 3
    nodes = [node("Cast", ["x"], ["i"], to=TensorProto.INT64), node("Cast", ["x"], ["b"], to=TensorProto.BOOL),
             node("Cast", ["b"], ["bf"], to=TensorProto.FLOAT), node("Cast", ["q"], ["qf"], to=TensorProto.FLOAT),
             node("Mul", ["qf", "sc"], ["w"]), node("MatMul", ["x", "w"], ["y"]),
             node("CastLike", ["i", "bf"], ["il"])]
    inits = {"q": RNG.integers(-128, 128, (4, 2)).astype(np.int8), "sc": np.float32(0.02)}
    return nodes, {"x": x}, inits, 17, ["y", "i", "b", "bf", "il"]


def compare_case():
    a, b = RNG.integers(-3, 3, (4, 5)), RNG.integers(-3, 3, (5,))
    ops = ["Equal", "Less", "Greater", "LessOrEqual", "GreaterOrEqual"]
    nodes = [node(o, ["a", "b"], [o]) for o in ops]
    nodes += [node("Not", ["Equal"], ["not"]), node("And", ["Less", "not"], ["and"]),
              node("Or", ["Greater", "Equal"], ["or"]), node("Xor", ["LessOrEqual", "GreaterOrEqual"], ["xor"]),
              node("Where", ["and", "a", "b"], ["where"])]
    return nodes, {"a": a, "b": b}, {}, 17, ops + ["not", "and", "or", "xor", "where"]


def gather_nd_case(batch_dims):
    x = f32(2, 3, 4, 5)
    idx = (i64(*[[[0, 1], [-1, 2]], [[1, 0], [0, -2]]]) if batch_dims == 0 else
           i64(*[[[1, 3], [2, 0], [0, -1]], [[0, 0], [-1, 2], [1, 1]]]))
    return [node("GatherND", ["x", "i"], batch_dims=batch_dims)], {"x": x}, {"i": idx}, 17


CASES = {
    "layer_norm": ([node("LayerNormalization", ["x", "g", "b"], epsilon=1e-6)], {"x": f32(2, 5, 8)},
                   {"g": f32(8), "b": f32(8)}, 17),
    "layer_norm_axis1_no_bias": ([node("LayerNormalization", ["x", "g"], axis=1, epsilon=1e-3)],
                                 {"x": f32(2, 5, 8)}, {"g": f32(5, 8)}, 17),
    "layer_norm_stash0": ([node("LayerNormalization", ["x", "g", "b"], stash_type=0)],
                          {"x": f32(2, 5, 8)}, {"g": f32(8), "b": f32(8)}, 17),
    **{f"decomposed_layer_norm_op{o}": (decomposed_layer_norm(o), {"x": f32(2, 5, 8)},
                                        {"two": np.float32(2), "eps": np.float32(1e-5), "g": f32(8), "b": f32(8),
                                         "ax": i64(-1)}, o) for o in (13, 18)},
    **{f"{op}_op{o}": reduce_case(op, o) for op in ("ReduceSum", "ReduceMax", "ReduceMin", "ReduceMean", "ReduceL2",
                                                    "ReduceL1", "ReduceSumSquare", "ReduceLogSumExp")
       for o in (11, 13, 18)},
    "reduce_all_keepdims": ([node("ReduceMax", ["x"])], {"x": f32(2, 3)}, {}, 17),
    "reduce_sum_int": ([node("ReduceSum", ["x", "ax"])], {"x": RNG.integers(-9, 9, (3, 4)).astype(np.int32)},
                       {"ax": i64(0)}, 17),
    **{f"unary_{op}": ([node(op, ["x"])], {"x": f32(3, 7, positive=op in ("Log", "Sqrt"))}, {}, 17)
       for op in ("Erf", "Sqrt", "Exp", "Log", "Neg", "Abs", "Reciprocal", "Sign", "Tanh", "Sigmoid")},
    **{f"gelu_{a}": ([node("Gelu", ["x"], approximate=a)], {"x": f32(3, 7)}, {}, 20) for a in ("none", "tanh")},
    "bert_erf_gelu": ([node("Div", ["x", "r2"], ["d"]), node("Erf", ["d"], ["e"]), node("Add", ["e", "one"], ["p"]),
                       node("Mul", ["x", "p"], ["m"]), node("Mul", ["m", "half"])], {"x": f32(3, 7)},
                      {"r2": np.float32(np.sqrt(2)), "one": np.float32(1), "half": np.float32(0.5)}, 17),
    "where_nan": ([node("IsNaN", ["x"], ["n"]), node("Where", ["n", "z", "x"])],
                  {"x": np.array([[1.0, np.nan, -2.0], [np.nan, 3.0, 0.5]], np.float32)}, {"z": np.float32(0)}, 17),
    **{f"split_{how}_op{o}": split_case(o, how) for o, how in ((11, "attribute"), (13, "input"), (13, "equal"),
                                                               (18, "num_outputs"))},
    **{f"pad_{m}_op{o}": pad_case(m, o) for m in ("constant", "reflect", "edge") for o in (2, 13, 18)},
    "pad_wrap_op19": ([node("Pad", ["x", "p"], mode="wrap")], {"x": f32(2, 3, 4)}, {"p": i64(0, 2, 1, 0, 1, 3)}, 19),
    "pad_int": ([node("Pad", ["x", "p"])], {"x": i64(*[[1, 2], [3, 4]])}, {"p": i64(1, 0, 0, 2)}, 13),
    "expand_bidirectional": ([node("Expand", ["x", "s"])], {"x": f32(3, 1)}, {"s": i64(2, 1, 4)}, 13),
    "tile": ([node("Tile", ["x", "r"])], {"x": f32(2, 3)}, {"r": i64(2, 3)}, 13),
    "compare_and_logic": compare_case(),
    "constant_of_shape": ([node("Shape", ["x"], ["s"]),
                           node("ConstantOfShape", ["s"], value=helper.make_tensor("v", TensorProto.FLOAT, [1], [1.5])),
                           node("ConstantOfShape", ["s"], ["z"])], {"x": f32(2, 3)}, {}, 17, ["y", "z"]),
    "constant_of_shape_int": ([node("ConstantOfShape", ["s"],
                                    value=helper.make_tensor("v", TensorProto.INT64, [1], [7]))],
                              {"s": i64(2, 4)}, {}, 17),
    "range_float": ([node("Range", ["a", "b", "c"])], {"a": np.array(0.5, np.float32), "b": np.array(3.7, np.float32)},
                    {"c": np.float32(0.4)}, 17),
    "range_int": ([node("Range", ["a", "b", "c"])], {"a": np.array(7), "b": np.array(-3)}, {"c": np.int64(-2)}, 17),
    "cast_bool_int_int8": cast_case(),
    **{f"trilu_{u}_{k}": ([node("Trilu", ["x", "k"], upper=u)], {"x": f32(2, 4, 5)}, {"k": np.int64(k)}, 17)
       for u in (0, 1) for k in (-1, 0, 2)},
    "einsum_attention": ([node("Einsum", ["q", "k"], equation="bhid,bhjd->bhij")],
                         {"q": f32(2, 3, 5, 4), "k": f32(2, 3, 6, 4)}, {}, 17),
    "softmax_op11_axis1": ([node("Softmax", ["x"], axis=1)], {"x": f32(2, 3, 4)}, {}, 11),
    "softmax_op13_axis1": ([node("Softmax", ["x"], axis=1)], {"x": f32(2, 3, 4)}, {}, 13),
    "softmax_masked": ([node("Add", ["x", "m"], ["s"]), node("Softmax", ["s"])],
                       {"x": f32(2, 3, 4), "m": np.array([0, 0, -30, -30], np.float32)}, {}, 17),
    **{f"variadic_{op}": ([node(op, ["a", "b", "c"])], {"a": f32(2, 3), "b": f32(3), "c": f32(1, 1)}, {}, 13)
       for op in ("Max", "Min", "Sum", "Mean")},
    "max_int_single": ([node("Max", ["a", "b"])], {"a": i64(3, -1, 4), "b": i64(2)}, {}, 13),
    **{f"gather_nd_b{b}": gather_nd_case(b) for b in (0, 1)},
    "cumsum": ([node("CumSum", ["x", "a"])], {"x": f32(3, 4)}, {"a": np.int64(1)}, 14),
    "cumsum_exclusive_reverse": ([node("CumSum", ["x", "a"], exclusive=1, reverse=1)],
                                 {"x": RNG.integers(0, 5, (3, 4)).astype(np.int64)}, {"a": np.int64(0)}, 14),
    "dequantize_per_tensor": ([node("DequantizeLinear", ["q", "s", "z"])], {},
                              {"q": RNG.integers(0, 256, (4, 3)).astype(np.uint8), "s": np.float32(0.01),
                               "z": np.uint8(128)}, 13),
    "dequantize_per_axis": ([node("DequantizeLinear", ["q", "s", "z"], axis=0)], {},
                            {"q": RNG.integers(-128, 128, (3, 5)).astype(np.int8),
                             "s": np.array([0.1, 0.02, 0.5], np.float32), "z": np.array([0, -3, 4], np.int8)}, 13),
    **{f"resize_{m}_{c}_{b}": resize_case(m, c, b) for m, c, b in (
        ("linear", "half_pixel", "scales"), ("linear", "half_pixel", "sizes"), ("linear", "align_corners", "sizes"),
        ("cubic", "half_pixel", "sizes"), ("cubic", "half_pixel", "scales"), ("cubic", "align_corners", "scales"),
        ("nearest", "asymmetric", "scales"), ("nearest", "half_pixel", "sizes"),
        ("nearest", "align_corners", "sizes"), ("nearest", "pytorch_half_pixel", "scales"))},
    **{f"resize_nearest_{n}": resize_case("nearest", "half_pixel", "scales", n)
       for n in ("round_prefer_ceil", "floor", "ceil")},
    "resize_axes_op18": ([node("Resize", ["x", "", "", "z"], mode="linear", axes=[2, 3])], {"x": f32(1, 2, 4, 4)},
                         {"z": i64(7, 3)}, 18),
    "ms_skip_layer_norm": ([ms("SkipLayerNormalization", ["x", "s", "g", "b", "c"], epsilon=1e-6)],
                           {"x": f32(2, 5, 8), "s": f32(2, 5, 8)}, {"g": f32(8), "b": f32(8), "c": f32(8)}, 17),
    "ms_skip_layer_norm_no_bias": ([ms("SkipLayerNormalization", ["x", "s", "g"])],
                                   {"x": f32(2, 5, 8), "s": f32(2, 5, 8)}, {"g": f32(8)}, 17),
    "ms_bias_gelu": ([ms("BiasGelu", ["x", "b"])], {"x": f32(3, 8)}, {"b": f32(8)}, 17),
    "ms_gelu": ([ms("Gelu", ["x"])], {"x": f32(3, 8)}, {}, 17),
    "ms_fast_gelu": ([ms("FastGelu", ["x", "b"])], {"x": f32(3, 8)}, {"b": f32(8)}, 17),
    "ms_fast_gelu_no_bias": ([ms("FastGelu", ["x"])], {"x": f32(3, 8)}, {}, 17),
    "ms_fused_matmul": ([ms("FusedMatMul", ["a", "b"], alpha=0.125, transB=1)], {"a": f32(2, 3, 5, 4)},
                        {"b": f32(2, 3, 6, 4)}, 17),
    "ms_fused_matmul_trans_a": ([ms("FusedMatMul", ["a", "b"], transA=1)], {"a": f32(3, 4, 5)}, {"b": f32(4, 2)}, 17),
}


@pytest.mark.parametrize("case", CASES, ids=list(CASES))
def test_op_matches_onnxruntime(case):
    nodes, feeds, inits, opset, *outputs = CASES[case]
    model = make(nodes, feeds, inits, opset, *outputs)
    assert_matches_ort(model, feeds)


def test_shape_subgraph_follows_the_token_length():
    """Shape -> Gather -> Unsqueeze -> Concat -> Reshape (heads split), a causal mask from Range/Trilu sized by
    the input, and ConstantOfShape/Expand: one module, two token lengths."""
    nodes = [
        node("Shape", ["x"], ["s"]), node("Gather", ["s", "one"], ["t"], axis=0),
        node("Unsqueeze", ["t", "zero1"], ["tu"]), node("Concat", ["b", "tu", "heads"], ["hs"], axis=0),
        node("Reshape", ["x", "hs"], ["h"]), node("Transpose", ["h"], ["q"], perm=[0, 2, 1, 3]),
        node("Transpose", ["h"], ["k"], perm=[0, 2, 3, 1]), node("MatMul", ["q", "k"], ["a"]),
        node("Concat", ["tu", "tu"], ["tt"], axis=0),
        node("ConstantOfShape", ["tt"], ["ones"], value=helper.make_tensor("v", TensorProto.FLOAT, [1], [1.0])),
        node("Trilu", ["ones", "one"], ["tri"], upper=1), node("Range", ["zero", "t", "one"], ["pos"]),
        node("Cast", ["tri"], ["mask"], to=TensorProto.BOOL), node("Where", ["mask", "neg", "a"], ["am"]),
        node("Softmax", ["am"], ["p"]), node("MatMul", ["p", "q"], ["o"]),
        node("Expand", ["pos", "tt"], ["pe"]), node("Cast", ["pe"], ["pf"], to=TensorProto.FLOAT),
        node("ReduceSum", ["pf", "one1"], ["ps"]), node("Mul", ["o", "ps"], ["y"]),
    ]
    inits = {"one": np.int64(1), "zero": np.int64(0), "zero1": i64(0), "one1": i64(1), "b": i64(-1),
             "heads": i64(2, 4), "neg": np.float32(-1e4)}
    model = make(nodes, {"x": f32(1, 5, 8)}, inits, 17)
    module = OnnxModule(model)
    for length in (5, 11):
        assert_matches_ort(model, {"x": f32(2, length, 8)}, module)


@pytest.mark.parametrize("op_type", ["Attention", "EmbedLayerNormalization"])
def test_unimplemented_contrib_fusions_are_refused_by_name(op_type):
    n = helper.make_node(op_type, ["x", "w"], ["y"], domain="com.microsoft", num_heads=2)
    model = make([n], {"x": f32(1, 4, 8)}, {"w": f32(8, 24)})
    with pytest.raises(EvonnxError, match=f"unsupported op\\(s\\): com.microsoft.{op_type} "):
        OnnxModule(model)


def test_refused_attributes_name_the_op():
    model = make([node("Resize", ["x", "", "s"], mode="cubic", cubic_coeff_a=-0.5)], {"x": f32(1, 1, 4, 4)},
                 {"s": np.array([1, 1, 2, 2], np.float32)}, 13)
    with pytest.raises(EvonnxError, match="Resize with mode=cubic"):
        OnnxModule(model)(torch.zeros(1, 1, 4, 4))


@pytest.mark.parametrize("optimized", [False, True], ids=["as-shipped", "ort-fused"])
def test_corpus_transformer_matches_onnxruntime(optimized, tmp_path):
    """MiniLM-L3 (BERT-style: Gather embeddings, LayerNormalization, additive mask) on 4 real inputs, as shipped
    and as ONNX Runtime's optimizer fuses it (SkipLayerNormalization, FastGelu, FusedMatMul): max error within
    1e-4 of the output scale."""
    pytest.importorskip("tokenizers")
    from evonnx.tools.corpus.models import BY_NAME
    entry = BY_NAME["minilm-l3"]
    try:
        path, feeds = entry.path(), entry.build(4, 0)
    except (OSError, EvonnxError) as e:
        pytest.skip(f"corpus model not available: {e}")
    if optimized:
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        options.optimized_model_filepath = str(tmp_path / "fused.onnx")
        ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        path = tmp_path / "fused.onnx"
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    module = OnnxModule(onnx.load(str(path)))
    assert not optimized or any(name.startswith("com.microsoft.") for name, *_ in module.nodes)
    batch = {k: v[:4] for k, v in feeds.items()}  # the graph fixes batch 1: torch runs the 4 as chunks
    for got, o in zip(run_numpy(module, batch), range(len(sess.get_outputs()))):
        for i in range(4):
            expected = sess.run(None, {k: v[i:i + 1] for k, v in feeds.items()})[o]
            assert got[i:i + 1].shape == expected.shape
            assert np.abs(got[i:i + 1] - expected).max() <= 1e-4 * np.abs(expected).max()

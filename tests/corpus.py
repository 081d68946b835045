"""Small ONNX models built with onnx.helper that hold weights the ways real models do."""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
IR = 8


def _model(nodes, inputs, outputs, inits=(), name="g", opset=OPSET) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, name, inputs, outputs, list(inits))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=IR)
    onnx.checker.check_model(model)
    return model


def _w(rng, *shape, name):
    return numpy_helper.from_array((rng.standard_normal(shape) / np.sqrt(shape[0])).astype(np.float32), name)


def fin(name, *dims, dtype=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, dtype, list(dims))


def mlp(seed=0, d_in=8, hidden=16, classes=4) -> onnx.ModelProto:
    """x[N,d_in] -> Gemm -> Relu -> Gemm -> logits[N,classes]."""
    rng = np.random.default_rng(seed)
    nodes = [helper.make_node("Gemm", ["x", "w1", "b1"], ["h"], name="fc1", transB=1),
             helper.make_node("Relu", ["h"], ["r"], name="relu"),
             helper.make_node("Gemm", ["r", "w2", "b2"], ["y"], name="fc2")]
    inits = [_w(rng, hidden, d_in, name="w1"), numpy_helper.from_array(rng.standard_normal(hidden).astype(np.float32), "b1"),
             _w(rng, hidden, classes, name="w2"), numpy_helper.from_array(np.zeros(classes, np.float32), "b2")]
    return _model(nodes, [fin("x", "N", d_in)], [fin("y", "N", classes)], inits)


def conv_net(seed=0) -> onnx.ModelProto:
    """x[N,1,8,8] -> Conv 4@3x3 -> Relu -> Flatten -> MatMul -> Add -> logits[N,3]."""
    rng = np.random.default_rng(seed)
    nodes = [helper.make_node("Conv", ["x", "k", "kb"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("Flatten", ["r"], ["f"]),
             helper.make_node("MatMul", ["f", "w"], ["m"], name="fc"),
             helper.make_node("Add", ["m", "b"], ["y"], name="bias")]
    inits = [_w(rng, 4, 1, 3, 3, name="k"), numpy_helper.from_array(np.zeros(4, np.float32), "kb"),
             _w(rng, 256, 3, name="w"), numpy_helper.from_array(np.zeros(3, np.float32), "b")]
    return _model(nodes, [fin("x", "N", 1, 8, 8)], [fin("y", "N", 3)], inits)


def constant_weights(seed=0) -> onnx.ModelProto:
    """The MatMul weight lives in a Constant node."""
    rng = np.random.default_rng(seed)
    value = rng.standard_normal((8, 4)).astype(np.float32)
    nodes = [helper.make_node("Constant", [], ["cw"], value=numpy_helper.from_array(value, "cw")),
             helper.make_node("MatMul", ["x", "cw"], ["y"], name="mm")]
    return _model(nodes, [fin("x", "N", 8)], [fin("y", "N", 4)])


def if_subgraph(seed=0) -> onnx.ModelProto:
    """An If whose branches each multiply by their own initializer weight; `flag` picks the branch."""
    rng = np.random.default_rng(seed)

    def branch(tag):
        w = _w(rng, 8, 4, name="w")  # the same name in both branches: hoisting must keep them apart
        return helper.make_graph([helper.make_node("MatMul", ["x", "w"], [f"y_{tag}"], name=f"mm_{tag}")],
                                 f"{tag}_branch", [], [fin(f"y_{tag}", "N", 4)], [w])

    nodes = [helper.make_node("If", ["flag"], ["y"], name="if", then_branch=branch("then"), else_branch=branch("else"))]
    return _model(nodes, [fin("x", "N", 8), fin("flag", dtype=TensorProto.BOOL)], [fin("y", "N", 4)])


def shared_weight(seed=0) -> onnx.ModelProto:
    """One weight read by two MatMul nodes (tied weights)."""
    rng = np.random.default_rng(seed)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"], name="mm1"), helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("MatMul", ["r", "w"], ["y"], name="mm2")]
    return _model(nodes, [fin("x", "N", 8)], [fin("y", "N", 8)], [_w(rng, 8, 8, name="w")])


def int8_parts(seed=0) -> onnx.ModelProto:
    """An int8 weight behind DequantizeLinear, followed by a float MatMul."""
    rng = np.random.default_rng(seed)
    q = numpy_helper.from_array(rng.integers(-127, 127, (8, 8)).astype(np.int8), "wq")
    scale = numpy_helper.from_array(np.array(0.01, np.float32), "wq_scale")
    zp = numpy_helper.from_array(np.array(0, np.int8), "wq_zp")
    nodes = [helper.make_node("DequantizeLinear", ["wq", "wq_scale", "wq_zp"], ["wd"]),
             helper.make_node("MatMul", ["x", "wd"], ["h"], name="mm_q"),
             helper.make_node("MatMul", ["h", "wf"], ["y"], name="mm_f")]
    return _model(nodes, [fin("x", "N", 8)], [fin("y", "N", 4)], [q, scale, zp, _w(rng, 8, 4, name="wf")])


def shared_input(seed=0, d=16) -> onnx.ModelProto:
    """Attention-like projections: three MatMuls read x[N, T, d] (as Q, K and V do), a fourth their mix."""
    rng = np.random.default_rng(seed)
    nodes = [helper.make_node("MatMul", ["x", f"w{p}"], [p], name=p) for p in "qkv"]
    nodes += [helper.make_node("Mul", ["k", "v"], ["kv"]), helper.make_node("Add", ["q", "kv"], ["s"]),
              helper.make_node("MatMul", ["s", "wo"], ["y"], name="o")]
    inits = [_w(rng, d, d, name=f"w{p}") for p in "qkvo"]
    return _model(nodes, [fin("x", "N", 5, d)], [fin("y", "N", 5, d)], inits)


def two_in_two_out(seed=0) -> onnx.ModelProto:
    """Two float inputs, an int64 token-id input (embedding), two outputs."""
    rng = np.random.default_rng(seed)
    nodes = [helper.make_node("Gather", ["emb", "ids"], ["e"], name="embed"),
             helper.make_node("ReduceMean", ["e"], ["em"], axes=[1], keepdims=0),
             helper.make_node("Add", ["em", "a"], ["s"]),
             helper.make_node("MatMul", ["s", "w"], ["y1"], name="head1"),
             helper.make_node("MatMul", ["b", "w2"], ["y2"], name="head2")]
    inits = [_w(rng, 20, 8, name="emb"), _w(rng, 8, 5, name="w"), _w(rng, 6, 3, name="w2")]
    return _model(nodes, [fin("a", "N", 8), fin("b", "N", 6), fin("ids", "N", 7, dtype=TensorProto.INT64)],
                  [fin("y1", "N", 5), fin("y2", "N", 3)], inits)


def int8_parts_only() -> onnx.ModelProto:
    """Nothing float to compress: an int8 weight behind DequantizeLinear and a scalar scale."""
    model = int8_parts()
    keep = [n for n in model.graph.node if n.name != "mm_f"]
    del model.graph.node[:]
    model.graph.node.extend(keep)
    model.graph.node[-1].output[0] = "y"
    inits = [t for t in model.graph.initializer if t.name != "wf"]
    del model.graph.initializer[:]
    model.graph.initializer.extend(inits)
    model.graph.output[0].type.tensor_type.shape.dim[1].dim_value = 8
    return model


def too_new_ir() -> onnx.ModelProto:
    model = mlp()
    model.ir_version = 99
    return model


def dynamic_dims(seed=0) -> onnx.ModelProto:
    """x[N,T,8] with a dynamic sequence dim T -> MatMul -> Relu -> mean over T -> Gemm -> logits[N,4]."""
    rng = np.random.default_rng(seed)
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"], name="proj"),
             helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("ReduceMean", ["r"], ["m"], axes=[1], keepdims=0),
             helper.make_node("Gemm", ["m", "w2", "b2"], ["y"], name="head", transB=1)]
    inits = [_w(rng, 8, 32, name="w1"), _w(rng, 4, 32, name="w2"), numpy_helper.from_array(np.zeros(4, np.float32), "b2")]
    return _model(nodes, [fin("x", "N", "T", 8)], [fin("y", "N", 4)], inits)


def cnn(seed=0) -> onnx.ModelProto:
    """x[N,3,12,12] -> Conv+BN+Relu -> depthwise Conv -> MaxPool -> 1x1 Conv -> GlobalAveragePool -> Gemm[N,10]."""
    rng = np.random.default_rng(seed)

    def vec(name, n, loc=0.0, scale=0.1):
        return numpy_helper.from_array((loc + scale * rng.standard_normal(n)).astype(np.float32), name)

    nodes = [helper.make_node("Conv", ["x", "c1", "c1b"], ["a"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("BatchNormalization", ["a", "bn_s", "bn_b", "bn_m", "bn_v"], ["an"], name="bn1"),
             helper.make_node("Relu", ["an"], ["ar"]),
             helper.make_node("Conv", ["ar", "dw"], ["d"], name="dwconv", group=16, pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["d"], ["dr"]),
             helper.make_node("MaxPool", ["dr"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("Conv", ["p", "c2", "c2b"], ["e"], name="conv2"),
             helper.make_node("Relu", ["e"], ["er"]),
             helper.make_node("GlobalAveragePool", ["er"], ["g"]),
             helper.make_node("Flatten", ["g"], ["f"]),
             helper.make_node("Gemm", ["f", "fc", "fcb"], ["y"], name="fc", transB=1)]
    inits = [_w(rng, 16, 3, 3, 3, name="c1"), vec("c1b", 16), vec("bn_s", 16, 1.0), vec("bn_b", 16),
             vec("bn_m", 16), numpy_helper.from_array(np.ones(16, np.float32), "bn_v"),
             _w(rng, 16, 1, 3, 3, name="dw"), _w(rng, 32, 16, 1, 1, name="c2"), vec("c2b", 32),
             _w(rng, 10, 32, name="fc"), vec("fcb", 10)]
    return _model(nodes, [fin("x", "N", 3, 12, 12)], [fin("y", "N", 10)], inits)


def _const(name, value, dtype=np.int64):
    return numpy_helper.from_array(np.asarray(value, dtype=dtype), name)


def scalar_intermediates(seed=0) -> onnx.ModelProto:
    """Shape arithmetic (0-d Gather of Shape, Unsqueeze, Concat) reshapes a hidden layer, an empty Slice is
    concatenated to it, a 0-d Constant scales the output: x[N,8] -> y[N,4]."""
    rng = np.random.default_rng(seed)
    half = helper.make_tensor("half", TensorProto.FLOAT, [], [0.5])
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["m"], name="fc1"), helper.make_node("Relu", ["m"], ["h"]),
             helper.make_node("Shape", ["h"], ["s"]), helper.make_node("Gather", ["s", "i0"], ["n"], axis=0),
             helper.make_node("Unsqueeze", ["n", "ax0"], ["n1"]),
             helper.make_node("Concat", ["n1", "c16"], ["shp"], axis=0),
             helper.make_node("Reshape", ["h", "shp"], ["hr"]),
             helper.make_node("Slice", ["hr", "zero1", "zero1", "one1"], ["empty"]),
             helper.make_node("Concat", ["hr", "empty"], ["hc"], axis=1),
             helper.make_node("MatMul", ["hc", "w2"], ["y0"], name="fc2"),
             helper.make_node("Constant", [], ["halfc"], value=half), helper.make_node("Mul", ["y0", "halfc"], ["y"])]
    inits = [_w(rng, 8, 16, name="w1"), _w(rng, 16, 4, name="w2"), _const("i0", 0), _const("ax0", [0]),
             _const("c16", [16]), _const("zero1", [0]), _const("one1", [1])]
    return _model(nodes, [fin("x", "N", 8)], [fin("y", "N", 4)], inits)


def recurrent_state(seed=0, batch="N") -> onnx.ModelProto:
    """A VAD-like step: x[N,8], state[2,N,4] (samples on axis 1), a scalar int64 rate sr -> y[N,3], new state."""
    rng = np.random.default_rng(seed)
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"], name="in"),
             helper.make_node("Gather", ["state", "i0"], ["s0"], axis=0),
             helper.make_node("Cast", ["sr"], ["srf"], to=TensorProto.FLOAT),
             helper.make_node("Div", ["srf", "rate"], ["scale"]),
             helper.make_node("Add", ["h", "s0"], ["a"]), helper.make_node("Mul", ["a", "scale"], ["a2"]),
             helper.make_node("Tanh", ["a2"], ["z"]),
             helper.make_node("MatMul", ["z", "w2"], ["y"], name="out"),
             helper.make_node("Unsqueeze", ["z", "ax0"], ["z1"]),
             helper.make_node("Concat", ["z1", "z1"], ["new_state"], axis=0)]
    inits = [_w(rng, 8, 4, name="w1"), _w(rng, 4, 3, name="w2"), _const("i0", 0), _const("ax0", [0]),
             _const("rate", 16000.0, np.float32)]
    inputs = [fin("x", batch, 8), fin("state", 2 if batch else None, batch, 4), fin("sr", dtype=TensorProto.INT64)]
    return _model(nodes, inputs, [fin("y", batch, 3), fin("new_state", 2, batch, 4)], inits)


def shape_feeding_weights(seed=0) -> onnx.ModelProto:
    """A float scales tensor computed from two weights (Mul) drives a cubic Resize; a kernel is stored
    transposed behind a Transpose node: x[N,2,4,4] -> Resize x2 -> Conv -> y[N,3,8,8]."""
    rng = np.random.default_rng(seed)
    nodes = [helper.make_node("Mul", ["scale_a", "scale_b"], ["scales"]),
             helper.make_node("Resize", ["x", "", "scales"], ["up"], mode="cubic"),
             helper.make_node("Transpose", ["k_t"], ["k"], perm=[1, 0, 2, 3]),
             helper.make_node("Conv", ["up", "k"], ["y"], name="conv", pads=[1, 1, 1, 1])]
    inits = [_const("scale_a", [1, 1, 1, 1], np.float32), _const("scale_b", [1, 1, 2, 2], np.float32),
             _w(rng, 2, 3, 3, 3, name="k_t")]
    return _model(nodes, [fin("x", "N", 2, 4, 4)], [fin("y", "N", 3, 8, 8)], inits)


def resampled_position(seed=0) -> onnx.ModelProto:
    """A ViT-style position embedding fitted to another grid: pos[1,2,3,3] (a weight) is resized to the input's
    grid (sizes from its shape, so nothing folds it) and added: x[N,2,H,W] + Resize(pos) -> Conv -> y[N,3,H,W]."""
    rng = np.random.default_rng(seed)
    nodes = [helper.make_node("Shape", ["x"], ["x_shape"]),
             helper.make_node("Slice", ["x_shape", "two", "four"], ["hw"]),
             helper.make_node("Concat", ["lead", "hw"], ["grid"], axis=0),
             helper.make_node("Resize", ["pos", "", "", "grid"], ["pos_up"], mode="linear"),
             helper.make_node("Add", ["x", "pos_up"], ["h"]),
             helper.make_node("Conv", ["h", "k"], ["y"], name="conv", pads=[1, 1, 1, 1])]
    pos = numpy_helper.from_array((rng.standard_normal((1, 2, 3, 3)) * 0.3 + 0.1).astype(np.float32), "pos")
    inits = [pos, _const("two", [2]), _const("four", [4]), _const("lead", [1, 2]), _w(rng, 3, 2, 3, 3, name="k")]
    return _model(nodes, [fin("x", "N", 2, "H", "W")], [fin("y", "N", 3, "H", "W")], inits)


def lstm(seed=0, hidden=8, steps=5) -> onnx.ModelProto:
    """A time-major LSTM: x[T=5, N, 6] -> LSTM (W, R, B initializers) -> Y_h[1, N, 8] -> Gemm -> y[N, 3]."""
    rng = np.random.default_rng(seed)
    w = numpy_helper.from_array((rng.standard_normal((1, 4 * hidden, 6)) * 0.4).astype(np.float32), "W")
    r = numpy_helper.from_array((rng.standard_normal((1, 4 * hidden, hidden)) * 0.4).astype(np.float32), "R")
    b = numpy_helper.from_array((rng.standard_normal((1, 8 * hidden)) * 0.1).astype(np.float32), "B")
    nodes = [helper.make_node("LSTM", ["x", "W", "R", "B"], ["", "h"], name="lstm", hidden_size=hidden),
             helper.make_node("Squeeze", ["h", "ax0"], ["h2"]),
             helper.make_node("Gemm", ["h2", "head", "head_b"], ["y"], name="head_fc")]
    inits = [w, r, b, _const("ax0", [0]), _w(rng, hidden, 3, name="head"),
             numpy_helper.from_array(np.zeros(3, np.float32), "head_b")]
    return _model(nodes, [fin("x", steps, "N", 6)], [fin("y", "N", 3)], inits)

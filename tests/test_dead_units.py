"""dead-units: weights into units nothing reads are zeroed, outputs stay exactly the same, other uses are safe."""
import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import corpus
from evonnx.errors import EvonnxError
from evonnx.passes.base import PassContext, get_pass
from evonnx.passes.engine.calib import synthetic
from evonnx.passes.state import load_state


def run(state, calib):
    sess = ort.InferenceSession(state.to_onnx().SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, calib.inputs)


def prune_dead(state):
    calib = synthetic(state.model, 16, seed=1)
    out = get_pass("dead-units")().run(state, PassContext(calib, device="cpu", progress=False))
    for a, b in zip(run(state, calib), run(out, calib)):
        assert np.array_equal(a, b), "dead-units changed an output"
    return out, out.history[-1]["removed"]


def three_layers(extra_output: bool = False):
    """x[N,6] -> Gemm(transB) -> Relu -> Add per-feature bias -> MatMul -> Relu -> Gemm -> y[N,3]."""
    rng = np.random.default_rng(0)
    w = {"w1": rng.standard_normal((8, 6)), "w2": rng.standard_normal((8, 5)), "w3": rng.standard_normal((5, 3))}
    w["w2"][4, :] = 0
    w["w2"][4, 2] = 1.0  # unit 4 of layer 1 feeds only unit 2 of layer 2
    w["w3"][2, :] = 0  # unit 2 of layer 2 feeds nothing: its column of w2 is dead, then unit 4 of layer 1
    nodes = [helper.make_node("Gemm", ["x", "w1"], ["h"], transB=1), helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("Add", ["r", "b"], ["rb"]), helper.make_node("MatMul", ["rb", "w2"], ["m"]),
             helper.make_node("Relu", ["m"], ["mr"]), helper.make_node("Gemm", ["mr", "w3"], ["y"])]
    inits = [numpy_helper.from_array(v.astype(np.float32), k) for k, v in w.items()]
    inits.append(numpy_helper.from_array(np.full((1, 8), 0.1, np.float32), "b"))
    outputs = [corpus.fin("y", "N", 3)] + ([corpus.fin("mr", "N", 5)] if extra_output else [])
    model = corpus._model(nodes, [corpus.fin("x", "N", 6)], outputs, inits)
    state = load_state(model.SerializeToString(), "three")
    return state.replace(masks={n: state.current(n) != 0 for n in ("w1", "w2", "w3")})


def test_zeroes_units_nothing_reads_through_a_chain_and_keeps_outputs():
    state, removed = prune_dead(three_layers())
    assert removed == {"w2": 8, "w1": 6}  # w2's column 2, then w1's row 4: unit 4 lost its only reader
    assert not state.current("w2")[:, 2].any() and not state.current("w1")[4].any()
    assert not state.masks["w2"][:, 2].any() and not state.masks["w1"][4].any()
    assert state.current("w1")[:4].all() and state.current("w3")[[0, 1, 3, 4]].all()


def test_a_unit_read_elsewhere_stays():
    _, removed = prune_dead(three_layers(extra_output=True))  # layer 2's units are a graph output too
    assert removed == {}


def test_conv_channels_through_pooling_and_not_across_flatten():
    rng = np.random.default_rng(0)
    k2 = rng.standard_normal((3, 4, 3, 3)).astype(np.float32)
    k2[:, 1] = 0  # conv2 ignores conv1's channel 1
    nodes = [helper.make_node("Conv", ["x", "k1", "k1b"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("MaxPool", ["r"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("Mul", ["p", "s"], ["ps"]),
             helper.make_node("Conv", ["ps", "k2"], ["c2"], pads=[1, 1, 1, 1]),
             helper.make_node("Flatten", ["c2"], ["f"]), helper.make_node("MatMul", ["f", "w"], ["y"])]
    w = rng.standard_normal((48, 2)).astype(np.float32)
    w[:16] = 0  # conv2's channel 0 feeds nothing, but through a Flatten: not followed
    inits = [numpy_helper.from_array(rng.standard_normal((4, 1, 3, 3)).astype(np.float32), "k1"),
             numpy_helper.from_array(np.zeros(4, np.float32), "k1b"),
             numpy_helper.from_array(np.full((4, 1, 1), 2.0, np.float32), "s"),
             numpy_helper.from_array(k2, "k2"), numpy_helper.from_array(w, "w")]
    model = corpus._model(nodes, [corpus.fin("x", "N", 1, 8, 8)], [corpus.fin("y", "N", 2)], inits)
    state, removed = prune_dead(load_state(model.SerializeToString(), "convs"))
    assert removed == {"k1": 9} and not state.current("k1")[1].any() and state.current("k1")[[0, 2, 3]].all()
    assert np.array_equal(state.current("k2"), k2)  # its channel 0 is read by the Flatten: kept


def test_a_second_output_read_keeps_the_units():
    rng = np.random.default_rng(0)
    k2 = rng.standard_normal((3, 4, 3, 3)).astype(np.float32)
    k2[:, 1] = 0
    nodes = [helper.make_node("Conv", ["x", "k1"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("MaxPool", ["c"], ["p", "idx"], kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("Conv", ["p", "k2"], ["y"], pads=[1, 1, 1, 1])]
    inits = [numpy_helper.from_array(rng.standard_normal((4, 1, 3, 3)).astype(np.float32), "k1"),
             numpy_helper.from_array(k2, "k2")]
    outputs = [corpus.fin("y", "N", 3, 4, 4), corpus.fin("idx", "N", 4, 4, 4, dtype=TensorProto.INT64)]
    model = corpus._model(nodes, [corpus.fin("x", "N", 1, 8, 8)], outputs, inits)
    _, removed = prune_dead(load_state(model.SerializeToString(), "indices"))
    assert removed == {}  # the indices of channel 1 depend on its values


def test_refuses_quantized_weights():
    state = load_state(corpus.mlp().SerializeToString(), "mlp")
    calib = synthetic(state.model, 8, seed=0)
    ctx = PassContext(calib, device="cpu", progress=False)
    state = get_pass("quantize")(bits=4).run(state, ctx)
    with pytest.raises(EvonnxError, match="before quantization"):
        get_pass("dead-units")().run(state, ctx)


"""Embedding tables rounded under their output-side Gram (passes/quant/tables.py): what the LayerNorm after them
removes costs nothing, GPTQ's rounding under it helps the rows the calibration never touched as much as the
others, and a table read by more than Gathers keeps plain rounding."""
import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from evonnx.passes.base import PassContext
from evonnx.passes.engine.calib import CalibData
from evonnx.passes.engine.tasks import Cosine
from evonnx.passes.quant.apply import Quantizer
from evonnx.passes.quant.layer import QuantSpec
from evonnx.passes.quant.tables import table_grams, table_views
from evonnx.passes.state import load_state

VOCAB, DIM, TOKENS, OUT = 200, 16, 6, 8
TABLE = "table"


def encoder(tied: bool = False):
    """ids [N, 6] -> Gather(table) + position rows -> LayerNorm -> MatMul [16, 8], features weighed unequally;
    `tied`: the table also read by a MatMul, as weights shared with an output projection are."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array((rng.standard_normal((VOCAB, DIM)) * 0.05).astype(np.float32), TABLE),
             numpy_helper.from_array((rng.standard_normal((TOKENS, DIM)) * 0.05).astype(np.float32), "pos"),
             numpy_helper.from_array(np.exp(rng.normal(0, 0.7, DIM)).astype(np.float32), "gamma"),
             numpy_helper.from_array(np.zeros(DIM, np.float32), "beta"),
             numpy_helper.from_array((rng.standard_normal((DIM, OUT)) * np.exp(rng.normal(0, 1, (DIM, 1))))
                                     .astype(np.float32), "w")]
    nodes = [helper.make_node("Gather", [TABLE, "ids"], ["rows"]),
             helper.make_node("Add", ["rows", "pos"], ["x"]),
             helper.make_node("LayerNormalization", ["x", "gamma", "beta"], ["h"], axis=-1),
             helper.make_node("MatMul", ["h", "w"], ["y"])]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", TOKENS, OUT])]
    if tied:
        nodes += [helper.make_node("MatMul", ["h", "up"], ["scores"]),
                  helper.make_node("MatMul", ["scores", TABLE], ["mixed"])]
        inits.append(numpy_helper.from_array(rng.standard_normal((DIM, VOCAB)).astype(np.float32), "up"))
        outputs.append(helper.make_tensor_value_info("mixed", TensorProto.FLOAT, ["n", TOKENS, DIM]))
    graph = helper.make_graph(nodes, "encoder", [helper.make_tensor_value_info("ids", TensorProto.INT64,
                                                                              ["n", TOKENS])], outputs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)


def calibration(low: int, high: int, n: int = 48, seed: int = 1) -> CalibData:
    ids = np.random.default_rng(seed).integers(low, high, (n, TOKENS))
    return CalibData({"ids": ids.astype(np.int64)}, None, f"ids {low}-{high}")


def setup(model, task=None):
    state = load_state(model.SerializeToString(), label="encoder")
    ctx = PassContext(calibration(0, VOCAB // 2), device="cpu", progress=False)
    return state, Quantizer(state, ctx.engine(state), task=task)


def test_the_table_gram_leaves_out_what_the_layernorm_removes():
    state, quantizer = setup(encoder())
    assert list(table_views(state, state.targets)) == [TABLE]
    s = table_grams(state, quantizer.engine, table_views(state, [TABLE]))[TABLE].astype(np.float64)
    ones = np.full(DIM, DIM ** -0.5)
    assert s.shape == (DIM, DIM) and np.allclose(s, s.T, rtol=1e-4, atol=1e-6)
    assert ones @ s @ ones < 1e-4 * np.trace(s) / DIM  # a shift of a whole row changes nothing after the norm
    diag = np.diag(s)
    assert diag.max() > 3 * diag.min()  # features weighed unequally downstream


def rows_error(model, weight: np.ndarray, ids: np.ndarray) -> float:
    """Relative squared error of the output on `ids` with the table replaced by `weight`."""
    def run(table):
        m = model.__class__()
        m.CopyFrom(model)
        for t in m.graph.initializer:
            if t.name == TABLE:
                t.CopyFrom(numpy_helper.from_array(table, TABLE))
        return ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(
            ["y"], {"ids": ids})[0]
    ref = run(next(numpy_helper.to_array(t) for t in model.graph.initializer if t.name == TABLE))
    return float(np.sum((run(weight) - ref) ** 2) / np.sum(ref ** 2))


def test_rounding_under_the_table_gram_helps_rows_the_calibration_never_touched():
    """The calibration reads rows 0-99 only; rows 100-199 are rounded under the same Gram (no row is judged by
    its own use) and their outputs' error falls as much as the others'."""
    model = encoder()
    for task in (None, Cosine(pool="mean")):
        _, quantizer = setup(model, task)
        plain = quantizer.quantize(TABLE, QuantSpec.parse("uniform/channel/rate@2")).weight
        shaped = quantizer.quantize(TABLE, QuantSpec.parse("uniform/channel/rate+gptq@2")).weight
        for low in (0, VOCAB // 2):
            ids = calibration(low, low + VOCAB // 2, seed=7).inputs["ids"]
            assert rows_error(model, shaped, ids) < 0.8 * rows_error(model, plain, ids), (task, low)


def test_a_table_also_read_by_a_matmul_keeps_plain_rounding():
    state, quantizer = setup(encoder(tied=True))
    assert table_views(state, state.targets) == {}
    plain = quantizer.quantize(TABLE, QuantSpec.parse("uniform/channel/rate@2")).weight
    assert np.array_equal(quantizer.quantize(TABLE, QuantSpec.parse("uniform/channel/rate+gptq@2")).weight, plain)


def test_the_probes_are_reckoned_where_a_table_is_among_the_weights():
    from evonnx.passes.compress.timing import CROSS_FITS, PROBE_FORWARDS, probe_seconds
    from evonnx.passes.quant.tables import MAX_SAMPLES

    state = load_state(encoder().SerializeToString(), label="encoder")
    assert probe_seconds(state, state.targets, 2.0, 8) == PROBE_FORWARDS * 2.0
    many = CROSS_FITS * MAX_SAMPLES * 4  # each fold probes at most MAX_SAMPLES of its samples
    assert probe_seconds(state, state.targets, 2.0, many) == PROBE_FORWARDS * 2.0 / 4
    assert probe_seconds(state, [n for n in state.targets if n != TABLE], 2.0, 8) == 0

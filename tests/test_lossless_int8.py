"""Already-quantized weights (int8 behind Cast -> Mul, and behind DequantizeLinear) leave the graph for their
own lossless records: bit-identical after decoding, entropy-coded, and never larger than zstd -19."""
import math

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import zstandard
from onnx import TensorProto, helper, numpy_helper

from evonnx.errors import EvxFormatError
from evonnx.formats import QuantizedTensor, encode_evx, read_evx
from evonnx.formats.record import encode_record, read_header
from evonnx.passes.compress import compress
from evonnx.runtime import decode
from evonnx.runtime.summary import inspect


def skewed_int8(rng, shape, spread=3.0):
    """Laplace-distributed codes around 0, as a symmetric int8 quantizer leaves them."""
    return np.clip(np.rint(rng.laplace(0, spread, shape)), -127, 127).astype(np.int8)


def int8_model(seed=0) -> onnx.ModelProto:
    """x -> MatMul(Cast(wc) * scale) -> MatMul(DequantizeLinear(wd, scale, zp)) -> y; opset 17, IR 10."""
    rng = np.random.default_rng(seed)
    inits = [numpy_helper.from_array(skewed_int8(rng, (64, 1024)), "wc"),
             numpy_helper.from_array(np.array(0.02, np.float32), "wc_scale"),
             numpy_helper.from_array(skewed_int8(rng, (1024, 128), 5.0), "wd"),
             numpy_helper.from_array(np.array(0.01, np.float32), "wd_scale"),
             numpy_helper.from_array(np.array(0, np.int8), "wd_zp")]
    nodes = [helper.make_node("Cast", ["wc"], ["wc_f"], to=TensorProto.FLOAT),
             helper.make_node("Mul", ["wc_f", "wc_scale"], ["wc_deq"]),
             helper.make_node("MatMul", ["x", "wc_deq"], ["h"]),
             helper.make_node("DequantizeLinear", ["wd", "wd_scale", "wd_zp"], ["wd_deq"]),
             helper.make_node("MatMul", ["h", "wd_deq"], ["y"])]
    graph = helper.make_graph(nodes, "int8", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 128])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)
    onnx.checker.check_model(model, full_check=True)
    return model


def run(model, x):
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


@pytest.fixture(scope="module")
def compressed(tmp_path_factory):
    folder = tmp_path_factory.mktemp("lossless")
    teacher = int8_model()
    onnx.save_model(teacher, str(folder / "q.onnx"))
    np.savez(folder / "q.npz", x=np.random.default_rng(1).standard_normal((32, 64)).astype(np.float32))
    result = compress(folder / "q.onnx", folder / "q.evx", calib=folder / "q.npz", max_drop=math.inf, holdout=0,
                      progress=False)
    return teacher, folder / "q.evx", result


def test_integer_weights_round_trip_bit_identically(compressed):
    teacher, evx, _ = compressed
    decoded = decode(evx)
    original = {t.name: t for t in teacher.graph.initializer}
    got = {t.name: numpy_helper.to_array(t) for t in decoded.graph.initializer}
    for name in ("wc", "wd", "wd_zp"):
        want = numpy_helper.to_array(original[name])
        assert got[name].dtype == want.dtype and got[name].shape == want.shape
        assert got[name].tobytes() == want.tobytes(), name
    x = np.random.default_rng(2).standard_normal((8, 64)).astype(np.float32)
    np.testing.assert_array_equal(run(decoded, x), run(teacher, x))


def test_records_are_lossless_and_beat_zstd(compressed):
    teacher, evx, result = compressed
    c = read_evx(evx)
    ints = {t.name for t in c.tensors if t.dtype == "int8"}
    assert c.version == (2, 1) and ints == {"wc", "wd"}  # the scalar zero point stays in the graph
    assert not {t.name for t in c.graph.graph.initializer} & {"wc", "wd"}
    rows = {t["name"]: t for t in inspect(evx)["tensors"]}
    original = {t.name: numpy_helper.to_array(t) for t in teacher.graph.initializer}
    for name in ("wc", "wd"):
        row = rows[name]
        assert (row["scheme"], row["dtype"], row["bits"]) == ("lossless-int8", "int8", 8)
        assert row["value_codec"] in ("ans", "ans-grid")
        z19 = len(zstandard.ZstdCompressor(level=19, write_content_size=True, write_checksum=True)
                  .compress(original[name].tobytes()))
        assert row["zstd_bytes"] == z19 and row["payload_bits"] <= 8 * z19
    assert {r["name"]: r["coded_bytes"] for r in result.lossless} == {n: rows[n]["coded_bytes"] for n in ("wc", "wd")}
    assert "wc" not in {r["name"] for r in result.layers} and {s["name"] for s in result.skipped} == {"wd_scale", "wd_zp"}


def test_small_or_uniform_integers_fall_back_to_zstd_or_fixed_width():
    """Where our coder cannot win (a flat distribution), the record keeps zstd's or plain bits."""
    rng = np.random.default_rng(3)
    flat = rng.integers(0, 256, (64, 64)).astype(np.uint8)
    repeated = np.tile(rng.integers(-100, 100, 64).astype(np.int8), 64)
    graph = helper.make_model(helper.make_graph([], "g", [], []))
    c = read_evx(encode_evx(graph, [QuantizedTensor.raw("flat", flat), QuantizedTensor.raw("rep", repeated)]))
    stats = {t.name: t for t in c.stats.tensors}
    assert stats["flat"].value_codec == "packed" and stats["rep"].value_codec == "zstd-planes"
    assert stats["rep"].coded_bytes < stats["rep"].zstd_bytes + 32
    assert [t.codes.tobytes() for t in c.tensors] == [flat.tobytes(), repeated.view(np.uint8).tobytes()]


def test_integers_take_the_raw_scheme_only():
    with pytest.raises(EvxFormatError, match="raw"):
        QuantizedTensor.uniform("q", (4,), "int8", 4, np.zeros(4, np.uint8), np.float32(1), np.float32(0))
    rec = bytearray(encode_record(QuantizedTensor.uniform("q", (4,), "float32", 4, np.zeros(4, np.uint8),
                                                          np.float32(1), np.float32(0))))
    rec[2] = TensorProto.INT8  # name_len, "q", elem_type
    with pytest.raises(EvxFormatError, match="integers are stored raw"):
        read_header(bytes(rec), "record")

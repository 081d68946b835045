"""The light decoder: .evx -> runnable ONNX (fp32 / fp16 / qdq), ONNX Runtime parity, and the CLI commands."""
from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from evonnx.errors import EvonnxError, EvxFormatError
from evonnx.formats import QuantizedTensor, dequantize, encode_evx, write_evx
from evonnx.runtime import FORMATS, decode
from evonnx.tools.session import session
from evonnx.tools import cmd_decode, cmd_inspect
from evonnx.tools.cli import main as cli_main

CPU = ["CPUExecutionProvider"]


def _model_and_records(opset: int, seed: int = 0):
    """A small CNN-ish model; returns (graph without the records, records, full search-time model)."""
    rng = np.random.default_rng(seed)
    conv_mask = rng.random((8, 3, 3, 3)) < 0.5
    conv = QuantizedTensor.uniform("conv.w", (8, 3, 3, 3), "float32", 4, rng.integers(0, 16, conv_mask.sum()),
                                   rng.random(8).astype(np.float32) * 0.1 + 0.01, np.full(8, 7.5, np.float32),
                                   mask=conv_mask, axis=0)
    fc_mask = rng.random((32, 16)) < 0.3
    fc = QuantizedTensor.uniform("fc.w", (32, 16), "float32", 3, rng.integers(0, 8, fc_mask.sum()),
                                 rng.random((2, 16)).astype(np.float32) * 0.1 + 0.01, rng.integers(0, 8, (2, 16)),
                                 mask=fc_mask, axis=0, block_size=16)
    head = QuantizedTensor.codebook("head.w", (16, 5), "float32", 2, rng.integers(0, 4, 80), rng.normal(size=4))
    half = QuantizedTensor.uniform("half.w", (5,), "float16", 8, rng.integers(0, 256, 5), np.float32(0.01),
                                   np.float32(128))
    bias = QuantizedTensor.raw("fc.b", rng.normal(size=16).astype(np.float32))
    records = [conv, fc, head, half, bias]
    nodes = [
        helper.make_node("Conv", ["x", "conv.w"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("Reshape", ["r", "shape"], ["f"]),
        helper.make_node("MatMul", ["f", "fc.w"], ["h"]),
        helper.make_node("Add", ["h", "fc.b"], ["h2"]),
        helper.make_node("MatMul", ["h2", "head.w"], ["o"]),
        helper.make_node("Cast", ["half.w"], ["half32"], to=TensorProto.FLOAT),
        helper.make_node("Add", ["o", "half32"], ["y"]),
    ]
    shape = numpy_helper.from_array(np.array([2, 32], np.int64), "shape")  # a non-target initializer
    g = helper.make_graph(nodes, "cnn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 2, 2])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 5])], initializer=[shape])
    graph = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    graph.ir_version = 10
    full = onnx.ModelProto()
    full.CopyFrom(graph)
    full.graph.initializer.extend(numpy_helper.from_array(dequantize(t), t.name) for t in records)
    return graph, records, full


def _run(model, x, so=None):
    return ort.InferenceSession(model.SerializeToString(), so, providers=CPU).run(None, {"x": x})[0]


def _no_opt():
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return so


X = np.random.default_rng(7).normal(size=(2, 3, 2, 2)).astype(np.float32)


@pytest.mark.parametrize("opset", [17, 21])
def test_fp32_weights_and_outputs_are_exactly_the_searched_ones(opset):
    graph, records, full = _model_and_records(opset)
    model = decode(encode_evx(graph, records, {"fitness": 1.0}))
    onnx.checker.check_model(model, full_check=True)
    assert model.ir_version == 10
    got = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    for t in records:
        assert got[t.name].dtype == dequantize(t).dtype
        assert got[t.name].tobytes() == dequantize(t).tobytes()
    assert np.array_equal(_run(model, X), _run(full, X))
    assert np.array_equal(_run(model, X, _no_opt()), _run(full, X, _no_opt()))


@pytest.mark.parametrize("opset", [17, 21])
def test_qdq_form_is_smaller_and_dequantizes_exactly(opset):
    graph, records, full = _model_and_records(opset)
    blob = encode_evx(graph, records)
    fp32, qdq = decode(blob), decode(blob, format="qdq")
    onnx.checker.check_model(qdq, full_check=True)
    assert len(qdq.SerializeToString()) < len(fp32.SerializeToString())
    ops = [n.op_type for n in qdq.graph.node]
    types = {i.name: i.data_type for i in qdq.graph.initializer}
    if opset >= 21:  # 3-bit blocked fc.w -> UINT4; mid-rise 4-bit conv.w -> doubled codes in UINT8; half.w cast
        assert ops.count("DequantizeLinear") == 3
        assert types["fc.w__evx_q"] == TensorProto.UINT4 and types["conv.w__evx_q"] == TensorProto.UINT8
    else:  # blocked needs opset 21: fc.w stays dense
        assert ops.count("DequantizeLinear") == 2 and types["fc.w"] == TensorProto.FLOAT
    assert "head.w" in types and "fc.b" in types  # codebook and raw stay dense
    assert np.array_equal(_run(qdq, X, _no_opt()), _run(full, X, _no_opt()))
    sess = session(blob, format="qdq")
    np.testing.assert_allclose(sess.run(None, {"x": X})[0], _run(full, X), rtol=1e-5, atol=1e-6)


def test_qdq_trt_form_has_int8_codes_and_zero_points_of_zero():
    graph, records, full = _model_and_records(21)
    trt = decode(encode_evx(graph, records), format="qdq-trt")
    onnx.checker.check_model(trt, full_check=True)
    inits = {i.name: i for i in trt.graph.initializer}
    dq = [n for n in trt.graph.node if n.op_type == "DequantizeLinear"]
    assert [n.output[0] for n in dq] == ["conv.w"]  # blocked fc.w and half.w (zero point 128) stay dense
    codes = numpy_helper.to_array(inits["conv.w__evx_q"])
    assert inits["conv.w__evx_q"].data_type == TensorProto.INT8 and np.abs(codes).max() <= 15  # doubled mid-rise
    assert inits["conv.w__evx_zp"].data_type == TensorProto.INT8
    assert not numpy_helper.to_array(inits["conv.w__evx_zp"]).any()
    assert np.array_equal(_run(trt, X, _no_opt()), _run(full, X, _no_opt()))


def test_fp16_form_halves_weights_and_stays_close():
    graph, records, full = _model_and_records(17)
    blob = encode_evx(graph, records)
    m = decode(blob, format="fp16")
    onnx.checker.check_model(m, full_check=True)
    types = {i.name: i.data_type for i in m.graph.initializer}
    assert types["conv.w__evx_fp16"] == TensorProto.FLOAT16 and "conv.w" not in types
    assert types["half.w"] == TensorProto.FLOAT16  # already half: unchanged
    assert len(m.SerializeToString()) < len(decode(blob).SerializeToString())
    np.testing.assert_allclose(_run(m, X), _run(full, X), rtol=2e-2, atol=2e-3)


def test_weights_listed_as_graph_inputs_are_dropped_from_inputs_in_node_forms():
    graph, records, _ = _model_and_records(17)
    graph.graph.input.append(helper.make_tensor_value_info("conv.w", TensorProto.FLOAT, [8, 3, 3, 3]))
    blob = encode_evx(graph, records)
    assert "conv.w" in [i.name for i in decode(blob).graph.input]
    for fmt in ("fp16", "qdq"):
        m = decode(blob, format=fmt)
        assert "conv.w" not in [i.name for i in m.graph.input]
        onnx.checker.check_model(m, full_check=True)


def test_session_helper_and_errors():
    graph, records, full = _model_and_records(17)
    blob = encode_evx(graph, records)
    sess = session(blob)
    assert sess.get_providers() == CPU
    assert np.array_equal(sess.run(None, {"x": X})[0], _run(full, X))
    with pytest.raises(EvonnxError, match="unknown output format"):
        decode(blob, format="int3")
    with pytest.raises(EvxFormatError):
        decode(blob[:-3])
    assert FORMATS == ("fp32", "fp16", "qdq", "qdq-trt")


# -- CLI -------------------------------------------------------------------------------------------
@pytest.fixture()
def evx(tmp_path):
    graph, records, _ = _model_and_records(21)
    path = tmp_path / "m.evx"
    write_evx(path, graph, records, {"run": "test"})
    return path


def test_cli_decode(evx, tmp_path, capsys):
    for fmt in FORMATS:
        out = tmp_path / f"m_{fmt}.onnx"
        assert cli_main(["decode", str(evx), "-o", str(out), "--format", fmt]) == 0
        onnx.checker.check_model(onnx.load(str(out)), full_check=True)
    assert "m_qdq.onnx" in capsys.readouterr().out
    assert cli_main(["decode", str(evx), "-o", str(evx)]) == 2
    assert cli_main(["decode", str(tmp_path / "missing.evx"), "-o", str(tmp_path / "x.onnx")]) == 2
    (tmp_path / "bad.evx").write_bytes(b"\x89EVX\r\n\x1a\n" + b"\x00" * 60)
    assert cli_main(["decode", str(tmp_path / "bad.evx"), "-o", str(tmp_path / "x.onnx")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 3 and "evonnx: error:" in err
    assert not (tmp_path / "x.onnx").exists()


TOP_KEYS = {"file", "version", "container_bytes", "graph_bytes", "graph_coded_bytes", "original_bytes", "ratio",
            "tensor_bytes", "tensor_coded_bytes", "payload_bits", "entropy_bits", "bits_over_entropy", "meta",
            "tensors"}
TENSOR_KEYS = {"name", "shape", "dtype", "scheme", "bits", "elements", "kept", "sparsity", "mask_codec", "value_codec",
               "coded_bytes", "payload_bits", "entropy_bits", "bits_over_entropy", "original_bytes", "zstd_bytes"}


def test_cli_inspect(evx, capsys):
    assert cli_main(["inspect", str(evx), "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert set(rep) == TOP_KEYS and rep["meta"] == {"run": "test"} and rep["version"] == "2.2"
    assert [set(t) for t in rep["tensors"]] == [TENSOR_KEYS] * 5
    conv = rep["tensors"][0]
    assert conv["name"] == "conv.w" and conv["shape"] == [8, 3, 3, 3] and conv["bits"] == 4
    assert 0.3 < conv["sparsity"] < 0.7 and conv["entropy_bits"] > 0
    raw = rep["tensors"][4]
    assert raw["scheme"] == "raw" and raw["entropy_bits"] is None and raw["bits_over_entropy"] is None
    assert rep["container_bytes"] == evx.stat().st_size
    assert rep["ratio"] == pytest.approx(rep["original_bytes"] / rep["container_bytes"], rel=1e-3)
    assert cli_main(["inspect", str(evx)]) == 0
    text = capsys.readouterr().out
    assert "conv.w" in text and "8x3x3x3" in text and "ratio" in text
    line = next(row for row in text.splitlines() if row.split()[0] == "conv.w")
    assert f"{8 * conv['coded_bytes'] / (8 * 3 * 3 * 3):.2f}" in line.split()  # coded bits a weight
    import evonnx
    assert evonnx.inspect(evx) == {**rep, "file": str(evx)}  # the Python API is what the command prints


def test_commands_expose_parser_and_run(evx, tmp_path):
    import argparse
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command")
    cmd_decode.add_parser(sub)
    cmd_inspect.add_parser(sub)
    args = parser.parse_args(["decode", str(evx), "-o", str(tmp_path / "o.onnx"), "--format", "fp16"])
    assert cmd_decode.run(args) == 0 and (tmp_path / "o.onnx").exists()
    assert cmd_inspect.run(parser.parse_args(["inspect", str(evx), "--json"])) == 0


@pytest.mark.parametrize("form", ["fp32", "qdq"])
@pytest.mark.parametrize("limit", [None, 2048])
def test_decode_to_file_writes_what_decode_builds(tmp_path, monkeypatch, form, limit):
    """decode_to_file (each dense weight dequantized as it is written) gives the model decode() builds: the
    same proto below protobuf's limit, and above it (a limit lowered to 2 KB) the same weights in an external
    data file."""
    from evonnx.runtime import model_io
    from evonnx.runtime.decode import decode_to_file

    graph, records, _ = _model_and_records(21)
    blob = encode_evx(graph, records)
    if limit:
        monkeypatch.setattr(model_io, "_PROTO_LIMIT", limit)
        monkeypatch.setattr(model_io, "HELD_BYTES", 64)
    path = decode_to_file(blob, tmp_path / "d.onnx", form)
    assert (tmp_path / "d.onnx.data").is_file() == bool(limit)
    got, want = onnx.load(str(path)), decode(blob, format=form)
    if not limit:
        assert got == want
    weights = lambda m: {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}  # noqa: E731
    assert weights(got).keys() == weights(want).keys()
    assert all(np.array_equal(weights(got)[n], w) for n, w in weights(want).items())
    np.testing.assert_array_equal(_run(got, X), _run(want, X))

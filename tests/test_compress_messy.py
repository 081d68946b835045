"""`evonnx compress` on models nobody here wrote: weights in odd places, int8 parts, dynamic dims, several
inputs and outputs, nothing to compress. Each run is decoded again and compared with what it reports."""
import json
import math

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

import corpus
from cli import evonnx
from evonnx.passes.pipeline import Pipeline
from evonnx.runtime import decode
from evonnx.passes.compress import compress

# a short search: these tests are about where the weights live, not how well they are pruned
LIGHT = [("directed-evolution", {"sparsity": 0.5, "steps": 2, "generations": 2, "population": 8}),
         ("quantize", {"bits": 4})]


def light_config(folder):
    path = folder / "light.json"
    path.write_text(json.dumps({"passes": [{"name": n, **p} for n, p in LIGHT]}))
    return path


def run(model, feeds):
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)


def save(tmp_path, name, model, **calib):
    path = tmp_path / f"{name}.onnx"
    onnx.save_model(model, str(path))
    if calib:
        np.savez(tmp_path / f"{name}.npz", **calib)
    return path, (tmp_path / f"{name}.npz" if calib else None)


def normal(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def quiet(**kwargs):
    return dict(progress=False, max_drop=math.inf, holdout=0, **kwargs)  # mechanics, not budgets


def test_constant_node_weight(tmp_path):
    model, calib = save(tmp_path, "const", corpus.constant_weights(), x=normal(64, 8))
    result = compress(model, tmp_path / "c.evx", calib=calib, pipeline=Pipeline(LIGHT), **quiet())
    (row,) = result.layers
    assert (row["name"], row["role"], row["sparsity"], row["bits"]) == ("cw", "matrix", 0.5, 4)
    decoded = decode(tmp_path / "c.evx")
    assert not [n for n in decoded.graph.node if n.op_type == "Constant"]
    x = normal(64, 8)
    teacher, student = run(corpus.constant_weights(), {"x": x})[0], run(decoded, {"x": x})[0]
    assert np.mean(teacher.argmax(1) == student.argmax(1)) == pytest.approx(result.top1_agreement)


def test_if_branch_the_calibration_never_takes_stays_exact(tmp_path):
    teacher = corpus.if_subgraph()
    model, calib = save(tmp_path, "if", teacher, x=normal(64, 8), flag=np.array(True))
    result = compress(model, tmp_path / "if.evx", calib=calib, sparsity=0.5, bits=4, **quiet())
    assert result.kept_exact == ["if/else_branch/w"]
    layers = {r["name"]: r for r in result.layers}
    assert layers["if/then_branch/w"]["sparsity"] == 0.5 and layers["if/else_branch/w"]["scheme"] == "raw"
    decoded = decode(tmp_path / "if.evx")
    x = normal(16, 8, seed=1)
    not_taken = {"x": x, "flag": np.array(False)}
    np.testing.assert_array_equal(run(decoded, not_taken)[0], run(teacher, not_taken)[0])
    taken = {"x": x, "flag": np.array(True)}
    assert not np.array_equal(run(decoded, taken)[0], run(teacher, taken)[0])


def test_external_data_quiet_cli(tmp_path):
    path = tmp_path / "ext.onnx"
    onnx.save_model(corpus.mlp(d_in=32, hidden=64, classes=10), str(path), save_as_external_data=True,
                    location="ext.bin", size_threshold=0)
    out = tmp_path / "ext.evx"
    result = evonnx("compress", path, "-o", out, "--config", light_config(tmp_path), "--samples", "64", "--quiet",
                    "--synthetic-ok", "--max-drop", "inf")
    assert result.returncode == 0 and result.stderr == "", result.stderr
    summary = result.stdout.splitlines()
    original = path.stat().st_size + (tmp_path / "ext.bin").stat().st_size
    assert summary[0].startswith(f"{out}: {out.stat().st_size:,} bytes from {original:,}")
    assert "w1 " in result.stdout and all("directed-evolution" not in line for line in summary)
    decoded = decode(out)
    assert run(decoded, {"x": normal(4, 32)})[0].shape == (4, 10)


def test_shared_weight_is_one_record(tmp_path):
    model, calib = save(tmp_path, "tied", corpus.shared_weight(), x=normal(64, 8))
    result = compress(model, tmp_path / "t.evx", calib=calib, pipeline=Pipeline(LIGHT), **quiet())
    assert [(r["name"], r["sparsity"]) for r in result.layers] == [("w", 0.5)]
    decoded = decode(tmp_path / "t.evx")
    assert [n.input[1] for n in decoded.graph.node if n.op_type == "MatMul"] == ["w", "w"]
    w = numpy_helper.to_array(next(t for t in decoded.graph.initializer if t.name == "w"))
    assert np.mean(w == 0) == 0.5


def test_int8_parts_left_untouched_and_reported(tmp_path):
    teacher = corpus.int8_parts()
    model, calib = save(tmp_path, "q", teacher, x=normal(64, 8))
    result = compress(model, tmp_path / "q.evx", calib=calib, pipeline=Pipeline(LIGHT), **quiet())
    assert {s["name"] for s in result.skipped} == {"wq", "wq_scale", "wq_zp"}
    assert [r["name"] for r in result.layers] == ["wf"]
    decoded = {t.name: t for t in decode(tmp_path / "q.evx").graph.initializer}
    for name in ("wq", "wq_scale", "wq_zp"):
        original = next(t for t in teacher.graph.initializer if t.name == name)
        assert decoded[name].SerializeToString() == original.SerializeToString()


def test_dynamic_dims_need_input_shape(tmp_path):
    model, _ = save(tmp_path, "dyn", corpus.dynamic_dims())
    out = tmp_path / "dyn.evx"
    refused = evonnx("compress", model, "-o", out, "--bits", "4")
    assert refused.returncode == 2 and "--input-shape x:DIMS" in refused.stderr and not out.exists()
    done = evonnx("compress", model, "-o", out, "--input-shape", "x:1x6x8", "--samples", "64", "--synthetic-ok",
                  "--max-drop", "inf", "--config", light_config(tmp_path), "--json", "--quiet")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["sparsity"] == pytest.approx(0.5, abs=0.01)
    assert run(decode(out), {"x": normal(3, 11, 8)})[0].shape == (3, 4)  # T stays dynamic in the decoded model


def test_several_inputs_outputs_and_token_ids(tmp_path):
    teacher = corpus.two_in_two_out()
    feeds = {"a": normal(64, 8), "b": normal(64, 6, seed=1), "ids": np.random.default_rng(2).integers(0, 20, (64, 7))}
    model, calib = save(tmp_path, "multi", teacher, **feeds)
    result = compress(model, tmp_path / "m.evx", calib=calib, pipeline=Pipeline(LIGHT), **quiet())
    assert {r["name"]: r["role"] for r in result.layers} == {"emb": "embedding", "w": "matrix", "w2": "matrix"}
    decoded = decode(tmp_path / "m.evx")
    assert [i.name for i in decoded.graph.input] == ["a", "b", "ids"] and len(decoded.graph.output) == 2
    y1, y2 = run(decoded, feeds)
    t1, _ = run(teacher, feeds)
    assert y2.shape == (64, 3) and np.mean(y1.argmax(1) == t1.argmax(1)) == pytest.approx(result.top1_agreement)


def test_conv_model(tmp_path):
    model, calib = save(tmp_path, "cnn", corpus.cnn(), x=normal(32, 3, 12, 12))
    result = compress(model, tmp_path / "cnn.evx", calib=calib, pipeline=Pipeline(LIGHT), **quiet())
    layers = {r["name"]: r for r in result.layers}
    assert {n for n, r in layers.items() if r["role"] == "conv"} == {"c1", "dw", "c2"}
    assert result.sparsity == pytest.approx(0.5, abs=0.01) and layers["bn_v"]["scheme"] == "raw"
    assert result.max_output_diff <= 1e-4
    x = normal(8, 3, 12, 12, seed=3)
    assert run(decode(tmp_path / "cnn.evx"), {"x": x})[0].shape == (8, 10)


def test_a_weight_only_a_resize_reads_is_stored_as_fp16_and_checked_on_the_decoded_model(tmp_path):
    """A position embedding resized to the input's grid cannot be fed to the search's sessions (ONNX Runtime
    checks such a Resize only with constant data): it stays baked, and the container holds it rounded to fp16."""
    teacher = corpus.resampled_position()
    model, calib = save(tmp_path, "pos", teacher, x=normal(32, 2, 4, 4))
    result = compress(model, tmp_path / "pos.evx", calib=calib, pipeline=Pipeline(LIGHT), **quiet())
    assert {s["name"]: s["reason"] for s in result.skipped}["pos"].endswith("stored as fp16")
    assert [r["name"] for r in result.layers if r["role"] == "conv"] == ["k"]
    decoded = decode(tmp_path / "pos.evx")
    pos = {t.name: numpy_helper.to_array(t) for t in decoded.graph.initializer}["pos"]
    original = numpy_helper.to_array(teacher.graph.initializer[0])
    assert pos.dtype == np.float32 and np.array_equal(pos, original.astype(np.float16).astype(np.float32))
    assert not np.array_equal(pos, original)
    assert result.max_output_diff <= 1e-4  # the decoded model gives what the verification measured


def test_nothing_to_compress_still_writes_a_container(tmp_path):
    teacher = corpus.int8_parts_only()
    model, _ = save(tmp_path, "none", teacher)
    out = tmp_path / "none.evx"
    result = evonnx("compress", model, "-o", out, "--samples", "16", "--synthetic-ok")
    assert result.returncode == 0, result.stderr
    assert "nothing to compress" in result.stdout and "left untouched: 3 tensors" in result.stderr
    x = normal(5, 8)
    np.testing.assert_array_equal(run(decode(out), {"x": x})[0], run(teacher, {"x": x})[0])

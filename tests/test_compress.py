"""`evonnx compress` end to end on a tiny model: verified output, config files, clean failures."""
import json
import math

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import corpus
from cli import evonnx
from evonnx.formats.container import read_evx
from evonnx.runtime import decode
from evonnx.runtime.summary import inspect as evonnx_inspect


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    model = root / "mlp.onnx"
    onnx.save_model(corpus.mlp(d_in=32, hidden=64, classes=10), str(model))
    calib = root / "calib.npz"
    np.savez(calib, x=np.random.default_rng(0).standard_normal((128, 32)).astype(np.float32))
    return root, model, calib


def test_compress_decode_within_fidelity(tiny):
    root, model, calib = tiny
    out = root / "flags.evx"
    result = evonnx("compress", model, "-o", out, "--calib", calib, "--sparsity", "0.5", "--bits", "4", "--json",
                    "--holdout", "0", "--max-drop", "inf")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)  # progress lines go to stderr with --json
    assert "directed-evolution" in result.stderr
    assert summary["sparsity"] == pytest.approx(0.5, abs=0.01) and summary["container_bytes"] == out.stat().st_size
    targets = {r["name"]: r for r in summary["layers"] if r["role"] == "matrix"}
    assert all(r["bits"] == 4 and r["scheme"] != "raw" for r in targets.values())
    stats = {t["name"]: t for t in evonnx_inspect(out)["tensors"]}
    assert all(r["coded_bytes"] == stats[n]["coded_bytes"] for n, r in targets.items())  # as the container holds
    # the metadata records the settings that differ from the defaults of the producer's version
    assert read_evx(out).meta["pipeline"] == [{"name": "directed-evolution", "sparsity": 0.5},
                                              {"name": "dead-units"}, {"name": "quantize"}]  # 4 bits: default
    decoded = decode(out)
    x = np.load(calib)["x"]
    teacher = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    student = ort.InferenceSession(decoded.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    agreement = np.mean(teacher.argmax(1) == student.argmax(1))
    assert agreement == pytest.approx(summary["top1_agreement"], abs=1e-9)


def test_config_file_gives_the_same_container(tiny):
    root, model, calib = tiny
    config = root / "pipeline.toml"
    config.write_text('[[passes]]\nname = "directed-evolution"\nsparsity = 0.5\n\n'
                      '[[passes]]\nname = "dead-units"\n\n[[passes]]\nname = "quantize"\nbits = 4\n')
    flags, from_file = root / "a.evx", root / "b.evx"
    for out, extra in ((flags, ["--sparsity", "0.5", "--bits", "4"]), (from_file, ["--config", config])):
        result = evonnx("compress", model, "-o", out, "--calib", calib, "--quiet", "--max-drop", "inf", *extra)
        assert result.returncode == 0, result.stderr
    assert flags.read_bytes() == from_file.read_bytes()


def test_bad_inputs_leave_no_file(tiny, tmp_path):
    root, model, calib = tiny
    wrong = tmp_path / "wrong.npz"
    np.savez(wrong, x=np.ones((4, 31), np.float32))
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(model.read_bytes()[:300])
    cases = [
        ([model, "-o", tmp_path / "o1.evx", "--calib", wrong], "wrong.npz: array 'x' has shape (4, 31)"),
        ([corrupt, "-o", tmp_path / "o2.evx"], "corrupt.onnx"),
        ([model, "-o", tmp_path / "missing" / "o3.evx"], "does not exist"),
        ([model, "-o", tmp_path / "o4.evx", "--sparsity", "1.5"], "--sparsity must be in [0, 1)"),
        ([model, "-o", tmp_path / "o5.evx", "--bits", "12"], "--bits must be auto or 1 to 8"),
        ([model, "-o", tmp_path / "o6.evx", "--max-bytes", "ten"], "--max-bytes must be a byte count or a ratio"),
        ([model, "-o", tmp_path / "o7.evx", "--max-bytes", "100x", "--bits", "4"], "--max-bytes sizes the bit"),
        ([model, "-o", tmp_path / "o8.evx", "--calib", calib, "--max-bytes", "400"], "--max-bytes 400: the graph"),
    ]
    for args, message in cases:
        result = evonnx("compress", *args)
        assert result.returncode == 2 and message in result.stderr, (args, result.stderr)
        assert "Traceback" not in result.stderr
    assert not [p for p in tmp_path.rglob("*") if p.suffix in (".evx", ".tmp")]


def test_bit_allocation_alone_leaves_the_teacher_graph_intact(tiny):
    """No pruning: the state's graph is the teacher's own, and the codebook re-fit must not add outputs to it."""
    from evonnx.passes.compress import compress

    root, model, calib = tiny
    result = compress(model, root / "bits.evx", calib=calib, sparsity=0, bits="auto", max_drop=math.inf,
                      progress=False)
    assert result.sparsity == 0 and result.max_output_diff <= 1e-4
    assert [o.name for o in decode(root / "bits.evx").graph.output] == ["y"]


def test_max_bytes_bounds_the_file_and_a_larger_bound_is_no_worse(tiny):
    from evonnx.passes.compress import compress

    root, model, calib = tiny
    fits = {}
    for limit in ("2000", "2.2x"):
        out = root / f"size-{limit}.evx"
        result = compress(model, out, calib=calib, sparsity=0.5, max_bytes=limit, progress=False)
        bound = int(limit) if limit.isdigit() else int(result.original_bytes / 2.2)
        assert result.container_bytes == out.stat().st_size <= bound
        assert result.history[-1]["settings"]["target_bytes"] < bound  # room left for graph, metadata, framing
        fits[bound] = result.fitness
    small, large = sorted(fits)
    assert small < large and fits[large] <= fits[small]


def test_max_bytes_fits_the_bit_allocation_of_a_config_and_runs_what_follows(tiny):
    """Directed Evolution, bits sized to the file, a fine-tune on the grid after them (needs torch)."""
    pytest.importorskip("torch")
    from evonnx.passes.pipeline import Pipeline
    from evonnx.passes.compress import compress

    root, model, calib = tiny
    ft = {"steps": 20, "batch_size": 32, "eval_every": 10}
    pipe = Pipeline([("directed-evolution", {"sparsity": 0.5}), ("bit-allocation", {}), ("distill-finetune", ft)])
    out = root / "config-size.evx"
    result = compress(model, out, calib=calib, pipeline=pipe, max_bytes=3000, progress=False)
    assert result.container_bytes <= 3000
    assert [r["pass"] for r in result.history[-2:]] == ["bit-allocation", "distill-finetune"]
    assert result.history[-2]["settings"]["target_bytes"] < 3000
    two = Pipeline([("bit-allocation", {}), ("bit-allocation", {})])
    with pytest.raises(Exception, match="exactly one bit-allocation"):
        compress(model, root / "no.evx", calib=calib, pipeline=two, max_bytes=3000, progress=False)


def test_a_compress_request_is_typed_defaulted_and_checked_before_any_work(tmp_path):
    import inspect

    import evonnx
    from evonnx.errors import EvonnxError
    from evonnx.passes.compress.request import CompressRequest
    r = CompressRequest("m.onnx", str(tmp_path / "m.evx"))
    assert r.output == tmp_path / "m.evx" and r.sparsity == "auto" and r.max_drop == 0.5 and r.enforced == 0.5
    sized = CompressRequest("m.onnx", tmp_path / "m.evx", max_bytes="100x")
    assert sized.sparsity == 0.9 and sized.max_drop is None and sized.enforced is None and sized.aim == 0.5
    assert CompressRequest("m.onnx", tmp_path / "m.evx", max_drop=math.inf).enforced is None
    for bad, message in [({"time_limit": -5}, "--time-limit"), ({"max_drop": -1}, "--max-drop"),
                         ({"holdout": 1.0}, "--holdout"), ({"resume": True}, "--workdir"),
                         ({"sparsity": 0.5, "pipeline": "p.toml"}, "--config"),
                         ({"time_limit": 60, "pipeline": "p.toml"}, "--time-limit sizes the default pipeline")]:
        with pytest.raises(EvonnxError, match=message):
            CompressRequest("m.onnx", tmp_path / "m.evx", **bad)
    with pytest.raises(EvonnxError, match="does not exist"):
        evonnx.compress("m.onnx", tmp_path / "missing" / "m.evx")
    assert list(inspect.signature(evonnx.compress).parameters)[:3] == ["model", "output", "calib"]


def test_verification_compares_decoded_bytes():
    """The decode check refuses a record whose weight differs from the searched one in bytes (even -0.0 against
    0.0), dtype or shape, and passes an exact one."""
    from evonnx.errors import EvonnxError
    from evonnx.formats.tensor import QuantizedTensor
    from evonnx.passes.compress.container import _check_weights

    w = np.arange(-3, 3, dtype=np.float32).reshape(2, 3)
    _check_weights([QuantizedTensor.raw("w", w)], {"w": w.copy()})
    _check_weights([QuantizedTensor.raw("s", np.float32(3))], {"s": np.array(3, np.float32)})  # 0-d stays 0-d
    _check_weights([QuantizedTensor.raw("t", w.T)], {"t": w.T})  # a strided array
    for other in (np.where(w == 0, -0.0, w).astype(np.float32), w.astype(np.float64), w.reshape(3, 2)):
        with pytest.raises(EvonnxError, match="'w' differs"):
            _check_weights([QuantizedTensor.raw("w", w)], {"w": other})
    with pytest.raises(EvonnxError, match="lacks"):
        _check_weights([], {"w": w})

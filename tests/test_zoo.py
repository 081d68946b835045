"""Fast tests for the reference model zoo (no full training)."""

from __future__ import annotations

import gzip
import importlib
import json
import struct

import numpy as np
import onnx
import pytest

torch = pytest.importorskip("torch")

from evonnx.tools import zoo  # noqa: E402
from evonnx.tools.zoo import data as zdata  # noqa: E402
from evonnx.tools.zoo import models as zmodels  # noqa: E402

# the package re-exports the function ``build``, which shadows the submodule attribute
zbuild = importlib.import_module("evonnx.tools.zoo.build")


def _write_idx(path, arr: np.ndarray, code: int, compress: bool) -> None:
    header = bytes([0, 0, code, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    payload = header + arr.astype(arr.dtype.newbyteorder(">")).tobytes()
    path.write_bytes(gzip.compress(payload) if compress else payload)


@pytest.mark.parametrize("compress", [False, True])
def test_read_idx_ubyte(tmp_path, compress):
    arr = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    p = tmp_path / ("x.idx.gz" if compress else "x.idx")
    _write_idx(p, arr, 0x08, compress)
    out = zdata.read_idx(p)
    assert out.dtype == np.uint8 and out.shape == (2, 3, 4)
    np.testing.assert_array_equal(out, arr)


def test_read_idx_big_endian_types(tmp_path):
    for code, dt in [(0x0C, np.int32), (0x0D, np.float32), (0x0B, np.int16)]:
        arr = (np.arange(10, dtype=np.float64) * 1000.5 - 3000).astype(dt).reshape(5, 2)
        p = tmp_path / f"t{code}.idx"
        _write_idx(p, arr, code, False)
        out = zdata.read_idx(p)
        assert out.dtype.isnative and out.dtype == np.dtype(dt)
        np.testing.assert_array_equal(out, arr)


def test_read_idx_rejects_bad_files(tmp_path):
    p = tmp_path / "bad.idx"
    p.write_bytes(b"\x01\x00\x08\x01" + struct.pack(">I", 3) + b"abc")
    with pytest.raises(ValueError, match="magic"):
        zdata.read_idx(p)
    p.write_bytes(b"\x00\x00\x08\x01" + struct.pack(">I", 5) + b"abc")
    with pytest.raises(ValueError, match="payload"):
        zdata.read_idx(p)


def test_fashion_mnist_loader_on_tiny_idx(tmp_path):
    rng = np.random.default_rng(0)
    for split, n in [("train", 7), ("t10k", 3)]:
        _write_idx(tmp_path / f"{split}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), 0x08, True)
        _write_idx(tmp_path / f"{split}-labels-idx1-ubyte", rng.integers(0, 10, n, dtype=np.uint8), 0x08, False)
    ds = zdata.load_fashion_mnist(tmp_path)
    assert ds.name == "fashion-mnist"
    assert ds.x_train.shape == (7, 1, 28, 28) and ds.x_train.dtype == np.float32
    assert ds.x_test.shape == (3, 1, 28, 28) and ds.y_test.dtype == np.int64
    assert 0.0 <= ds.x_train.min() and ds.x_train.max() <= 1.0


def test_missing_fashion_falls_back_to_digits(tmp_path, monkeypatch):
    pytest.importorskip("sklearn")
    monkeypatch.setenv("EVONNX_FASHION_MNIST", str(tmp_path))
    assert not zdata.fashion_mnist_available()
    with pytest.warns(RuntimeWarning, match="digits"):
        ds = zdata.load_dataset(seed=0)
    assert ds.name == "sklearn-digits28"
    assert ds.x_train.shape[1:] == (1, 28, 28) and ds.x_train.dtype == np.float32
    assert len(ds.y_train) + len(ds.y_test) == 1797
    assert ds.x_train.max() == 1.0 and ds.x_train.min() == 0.0
    assert not ds.x_train[:, :, :2].any()  # zero padding border
    again = zdata.load_digits28(seed=0)
    np.testing.assert_array_equal(ds.y_test, again.y_test)
    assert zbuild._expected_dataset("lenet5") == "sklearn-digits28"


def test_param_counts():
    assert zmodels.count_params(zmodels.lenet5()) == 431_080
    assert zmodels.count_params(zmodels.lenet300()) == 266_610
    assert zmodels.count_params(zmodels.resnet50ish()) == 25_557_032


def test_model_output_shapes():
    x = torch.zeros(2, 1, 28, 28)
    assert zmodels.lenet300()(x).shape == (2, 10)
    assert zmodels.lenet5()(x).shape == (2, 10)
    r = zmodels.resnet50ish(image_size=32, num_classes=7).eval()
    assert r.input_shape == (3, 32, 32)
    with torch.no_grad():
        assert r(torch.zeros(1, 3, 32, 32)).shape == (1, 7)
    with pytest.raises(ValueError):
        zmodels.resnet50ish(image_size=16)


def test_export_round_trip_lenet300():
    torch.manual_seed(0)
    model = zmodels.lenet300()
    proto = zoo.export_onnx(model, model.input_shape)
    assert proto.ir_version <= 10
    assert [o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")] == [17]
    assert [i.name for i in proto.graph.input] == ["input"]
    assert [o.name for o in proto.graph.output] == ["logits"]
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # dynamic batch
    onnx.checker.check_model(proto)
    sess = zoo.ort_session(proto)
    x = np.random.default_rng(1).random((5, 1, 28, 28), dtype=np.float32)
    err = zoo.verify_onnx(sess, model, x)
    assert err <= 1e-4
    with torch.no_grad():
        ref = model(torch.from_numpy(x[:3])).numpy()
    np.testing.assert_allclose(zoo.ort_predict(sess, x[:3], batch_size=2), ref, atol=1e-4, rtol=0)


def test_train_model_is_reproducible():
    rng = np.random.default_rng(0)
    x = rng.random((96, 1, 28, 28), dtype=np.float32)
    y = rng.integers(0, 10, 96).astype(np.int64)
    recipe = zoo.Recipe(epochs=2, batch_size=32, lr=1e-3)
    weights = []
    for _ in range(2):
        torch.manual_seed(0)
        m = zmodels.lenet300()
        zoo.train_model(m, x, y, recipe, seed=3)
        weights.append(m.fc1.weight.detach().clone())
    assert torch.equal(weights[0], weights[1])
    assert torch.get_num_threads() >= 1


def test_build_returns_cache_without_training(tmp_path, monkeypatch):
    """A complete entry with matching meta is reused; mismatched meta triggers a rebuild."""
    out = tmp_path / "lenet300"
    out.mkdir()
    torch.manual_seed(0)
    proto = zoo.export_onnx(zmodels.lenet300(), (1, 28, 28))
    (out / "model.onnx").write_bytes(proto.SerializeToString())
    x = np.zeros((4, 1, 28, 28), np.float32)
    y = np.zeros(4, np.int64)
    np.savez(out / "calib.npz", input=x, labels=y)
    np.savez(out / "test.npz", input=x, labels=y)
    meta = {
        "name": "lenet300",
        "seed": 0,
        "zoo_version": zoo.ZOO_VERSION,
        "input_shape": [1, 28, 28],
        "dataset": zbuild._expected_dataset("lenet300"),
        "test_accuracy": 0.5,
    }
    (out / "meta.json").write_text(json.dumps(meta))

    def boom(*a, **k):
        raise AssertionError("should not rebuild")

    monkeypatch.setattr(zbuild, "_build_locked", boom)
    entry = zoo.build("lenet300", out_dir=out)
    assert entry.model_path == out / "model.onnx" and entry.test_path == out / "test.npz"
    assert entry.load_calib()["input"].shape == (4, 1, 28, 28)
    assert zoo.load("lenet300", out_dir=out) is not None
    with pytest.raises(AssertionError, match="rebuild"):
        zoo.build("lenet300", out_dir=out, seed=1)
    with pytest.raises(AssertionError, match="rebuild"):
        zoo.build("lenet300", out_dir=out, force=True)
    (out / "test.npz").unlink()
    assert zoo.load("lenet300", out_dir=out) is None


def test_default_dir_and_names(tmp_path, monkeypatch):
    monkeypatch.setenv("EVONNX_ZOO", str(tmp_path))
    assert zoo.default_dir("lenet5") == tmp_path / "lenet5"
    assert zoo.default_dir("resnet50ish", 64) == tmp_path / "resnet50ish_64"
    assert set(zoo.available()) == {"lenet300", "lenet5", "resnet50ish"}
    with pytest.raises(ValueError):
        zoo.build("vgg16", out_dir=tmp_path)


def test_atomic_write_leaves_no_temp_on_error(tmp_path):
    target = tmp_path / "f.bin"
    target.write_bytes(b"old")

    def bad(fh):
        fh.write(b"partial")
        raise RuntimeError("fail")

    with pytest.raises(RuntimeError):
        zbuild._atomic_write(target, bad)
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.bin"]


def test_build_end_to_end_on_digits(tmp_path, monkeypatch, caplog):
    """Full build path (train, export, verify, score, files, cache) on the tiny digits fallback."""
    pytest.importorskip("sklearn")
    monkeypatch.setenv("EVONNX_FASHION_MNIST", str(tmp_path / "none"))
    monkeypatch.setitem(zbuild.RECIPES, "lenet300", zoo.Recipe(epochs=3, batch_size=64, lr=2e-3))
    out = tmp_path / "zoo"
    caplog.set_level("INFO", logger="evonnx")
    with pytest.warns(RuntimeWarning, match="digits"):
        entry = zoo.build("lenet300", out_dir=out)
    meta = json.loads((out / "meta.json").read_text())
    assert meta == entry.meta
    assert meta["dataset"] == "sklearn-digits28" and meta["params"] == 266_610
    assert meta["ir_version"] <= 10 and meta["opset"] == 17 and meta["seed"] == 0
    assert meta["test_accuracy"] > 0.6 and meta["train_seconds"] > 0
    calib, test = entry.load_calib(), entry.load_test()
    assert calib["input"].shape == (1000, 1, 28, 28) and calib["labels"].dtype == np.int64
    assert test["input"].shape == (meta["n_test"], 1, 28, 28)
    pred = zoo.ort_predict(zoo.ort_session(entry.model_path), test["input"]).argmax(1)
    assert np.mean(pred == test["labels"]) == pytest.approx(meta["test_accuracy"])
    assert sorted(p.name for p in out.iterdir()) == [".lock", "calib.npz", "meta.json", "model.onnx", "test.npz"]
    assert zoo.build("lenet300", out_dir=out).meta == meta  # cache hit
    assert "cached" in caplog.records[-1].getMessage()


def test_rows_in_finds_exactly_the_calibration_samples():
    from evonnx.tools.zoo.build import rows_in
    rng = np.random.default_rng(1)
    x = rng.random((50, 1, 4, 4)).astype(np.float32)
    x[7] = x[3]  # a duplicate of a calibration sample goes too
    calib = x[[3, 10, 42]]
    hit = rows_in(x, calib)
    assert np.flatnonzero(hit).tolist() == [3, 7, 10, 42]
    near = calib.copy()
    near[1, 0, 0, 0] = np.nextafter(near[1, 0, 0, 0], 2)  # one ulp off: not in x
    with pytest.raises(ValueError, match="not all in the train split"):
        rows_in(x, near)

"""Search checkpoints: atomic, fingerprinted, named groups of arrays, large arrays stored once per content."""
import numpy as np

from evonnx.passes.sparsity import checkpoint


def test_large_arrays_are_written_once_per_content_and_garbage_collected(tmp_path, monkeypatch):
    monkeypatch.setattr(checkpoint, "BLOB_BYTES", 1024)
    path = tmp_path / "checkpoint.npz"
    big_a, big_b = np.arange(4096, dtype=np.float32), np.ones((64, 64), np.float32)
    checkpoint.save(path, {"fingerprint": "f", "step": 1}, {"weights": {"a": big_a, "/b:0": big_b},
                                                           "masks": {"a": np.zeros(3)}})
    blobs = sorted((tmp_path / "checkpoint.npz.blobs").iterdir())
    assert len(blobs) == 2
    stamp = {f.name: f.stat().st_mtime_ns for f in blobs}
    changed = big_b * 2
    checkpoint.save(path, {"fingerprint": "f", "step": 2}, {"weights": {"a": big_a, "/b:0": changed},
                                                           "masks": {"a": np.ones(3)}, "empty": {}})
    after = {f.name: f.stat().st_mtime_ns for f in (tmp_path / "checkpoint.npz.blobs").iterdir()}
    assert len(after) == 2 and sum(stamp.get(n) == t for n, t in after.items()) == 1  # `a` was not rewritten
    header, groups = checkpoint.load(path, "f")
    assert header == {"fingerprint": "f", "step": 2}
    assert sorted(groups) == ["empty", "masks", "weights"] and groups["empty"] == {}
    assert list(groups["weights"]) == ["a", "/b:0"]  # tensor names as they are, in order
    assert np.array_equal(groups["weights"]["a"], big_a) and np.array_equal(groups["weights"]["/b:0"], changed)
    assert np.array_equal(groups["masks"]["a"], np.ones(3))
    assert checkpoint.load(path, "other run") is None
    for f in (tmp_path / "checkpoint.npz.blobs").iterdir():
        f.unlink()
    assert checkpoint.load(path, "f") is None  # a missing blob: start afresh, never a partial state

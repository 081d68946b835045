"""Search checkpoints: atomic, fingerprinted, large arrays stored once per content."""
import numpy as np

from evonnx.passes.sparsity import checkpoint


def test_large_arrays_are_written_once_per_content_and_garbage_collected(tmp_path, monkeypatch):
    monkeypatch.setattr(checkpoint, "BLOB_BYTES", 1024)
    path = tmp_path / "checkpoint.npz"
    big_a, big_b = np.arange(4096, dtype=np.float32), np.ones((64, 64), np.float32)
    checkpoint.save(path, {"fingerprint": "f", "step": 1}, {"a": big_a, "b": big_b, "small": np.zeros(3)})
    blobs = sorted((tmp_path / "checkpoint.npz.blobs").iterdir())
    assert len(blobs) == 2
    stamp = {f.name: f.stat().st_mtime_ns for f in blobs}
    changed = big_b * 2
    checkpoint.save(path, {"fingerprint": "f", "step": 2}, {"a": big_a, "b": changed, "small": np.ones(3)})
    after = {f.name: f.stat().st_mtime_ns for f in (tmp_path / "checkpoint.npz.blobs").iterdir()}
    assert len(after) == 2 and sum(stamp.get(n) == t for n, t in after.items()) == 1  # `a` was not rewritten
    header, arrays = checkpoint.load(path, "f")
    assert header == {"fingerprint": "f", "step": 2}
    assert np.array_equal(arrays["a"], big_a) and np.array_equal(arrays["b"], changed)
    assert np.array_equal(arrays["small"], np.ones(3))
    assert checkpoint.load(path, "other run") is None
    for f in (tmp_path / "checkpoint.npz.blobs").iterdir():
        f.unlink()
    assert checkpoint.load(path, "f") is None  # a missing blob: start afresh, never a partial state

"""`evonnx compress --workdir W [--resume]`: a run killed mid-search resumes to the very bytes of an
uninterrupted run, and one work dir never mixes two runs."""
import json
import signal
import subprocess
import sys
import time

import numpy as np
import onnx
import pytest

import corpus
from evonnx.errors import EvonnxError
from evonnx.passes.compress import compress

# an evaluation budget, not a time limit: the run is deterministic, so bytes can be compared
CONFIG = {"passes": [{"name": "directed-evolution", "sparsity": 0.8, "max_evaluations": 2000, "on_budget": "finish"},
                     {"name": "quantize", "bits": 4}]}


def command(*args):
    return [sys.executable, "-m", "evonnx", "compress", *map(str, args)]


def evonnx(*args):
    return subprocess.run(command(*args), capture_output=True, text=True)


def wait_for_first_step(proc, folder, timeout=120.0):
    """Poll until the search has checkpointed a committed step (not only its start), then return."""
    deadline = time.monotonic() + timeout
    log, checkpoint = folder / "log.jsonl", folder / "checkpoint.npz"
    while time.monotonic() < deadline and proc.poll() is None:
        if checkpoint.exists() and log.exists() and '"event": "step"' in log.read_text():
            return
        time.sleep(0.01)
    raise AssertionError("the run ended or stalled before its first checkpointed step")


def test_resume_after_sigkill_equals_an_uninterrupted_run(tmp_path):
    model, calib, config = tmp_path / "mlp.onnx", tmp_path / "calib.npz", tmp_path / "pipeline.json"
    onnx.save_model(corpus.mlp(d_in=16, hidden=48, classes=10), str(model))
    np.savez(calib, x=np.random.default_rng(0).standard_normal((64, 16)).astype(np.float32))
    config.write_text(json.dumps(CONFIG))
    common = [model, "--calib", calib, "--config", config, "--max-drop", "inf"]

    reference = tmp_path / "reference.evx"
    done = evonnx(*common, "-o", reference, "--workdir", tmp_path / "w_ref", "--quiet")
    assert done.returncode == 0, done.stderr

    work, out = tmp_path / "w", tmp_path / "out.evx"
    proc = subprocess.Popen(command(*common, "-o", out, "--workdir", work, "--quiet"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_first_step(proc, work / "directed-evolution")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL and not out.exists()
    assert json.loads((work / "run.json").read_text())["finished"] is False

    again = evonnx(*common, "-o", out, "--workdir", work)
    assert again.returncode == 2 and "add --resume" in again.stderr and not out.exists()
    api = dict(calib=calib, pipeline=config, max_drop=float("inf"), progress=False)
    with pytest.raises(EvonnxError, match="another model, calibration set or settings"):
        compress(model, out, workdir=work, resume=True, seed=1, **api)
    with pytest.raises(EvonnxError, match="no run to resume"):
        compress(model, out, workdir=tmp_path / "empty", resume=True, **api)

    resumed = evonnx(*common, "-o", out, "--workdir", work, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert "directed-evolution: resumed at round" in resumed.stderr
    assert out.read_bytes() == reference.read_bytes()

    # a finished run's work dir takes a fresh run without --resume (its checkpoint is not reused)
    fresh = evonnx(*common, "-o", tmp_path / "fresh.evx", "--workdir", work)
    assert fresh.returncode == 0 and "resumed" not in fresh.stderr, fresh.stderr
    assert (tmp_path / "fresh.evx").read_bytes() == reference.read_bytes()

"""The peers bench's table: drops carry the paired standard error of the same test samples."""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("zstandard")
from evonnx.tools.bench import paired_se  # noqa: E402
from evonnx.tools.bench.peers import render  # noqa: E402


def test_paired_se_counts_only_the_samples_that_change():
    y = np.zeros(400, np.int64)
    reference = np.zeros(400, np.int64)
    reference[:20] = 1  # the reference gets 20 wrong
    pred = reference.copy()
    pred[:5] = 0  # 5 of those turn right
    pred[100:111] = 2  # 11 right ones turn wrong
    pred[10:15] = 3  # wrong before and after, differently: not a flip
    assert paired_se(reference, pred, y) == pytest.approx(100 * np.sqrt(16) / 400)
    pred[:20] = 4  # the reference's wrong ones, wrong another way: not a flip either
    assert paired_se(reference, pred, y) == pytest.approx(100 * np.sqrt(11) / 400)
    assert paired_se(reference, reference, y) == 0


def test_render_shows_drop_and_its_standard_error():
    rows = [{"model": "m", "method": "lossless", "file": 500, "fp32": 1000, "dense": 0.9, "acc": 0.9},
            {"model": "m", "method": "lossy", "file": 10, "fp32": 1000, "dense": 0.9, "acc": 0.8875, "se": 0.2,
             "seconds": 3.0},
            {"model": "m", "method": "inapplicable", "file": None, "fp32": 1000, "dense": 0.9, "acc": None}]
    lines = render(rows).splitlines()
    assert "± s.e." in lines[2]
    assert lines[4] == "| m | lossless | 500 | 2.0× | 0.9000 | 0.00 | 0 | – |"
    assert lines[5] == "| m | lossy | 10 | 100.0× | 0.8875 | 1.25 | 0.20 | 3.0 |"
    assert lines[6] == "| m | inapplicable | n/a | – | – | – | – | – |"

"""The detector bench: detections reproduced are pooled over images, and the student's extra ones are counted."""
from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np

from evonnx.tools.bench.detector import detections, reproduced, run_options, table


def _table(boxes: list[tuple[float, float, float, float, int, float]], classes: int = 3, anchors: int = 8):
    """A [4 + classes, anchors] yolov8 table holding (cx, cy, w, h, class, score) at the first anchors."""
    t = np.zeros((4 + classes, anchors), np.float32)
    t[:4] = 1.0
    for i, (cx, cy, w, h, k, score) in enumerate(boxes):
        t[:4, i] = cx, cy, w, h
        t[4 + k, i] = score
    return t


def test_pooled_share_and_extra_detections():
    teacher = np.stack([_table([(50, 50, 20, 20, 0, 0.9), (150, 50, 20, 20, 1, 0.95), (50, 150, 20, 20, 2, 0.6)]),
                        _table([]), _table([(100, 100, 40, 40, 0, 0.85)])])
    student = np.stack([_table([(51, 50, 20, 20, 0, 0.82), (150, 50, 20, 20, 2, 0.9), (50, 150, 20, 20, 2, 0.7)]),
                        _table([(10, 10, 8, 8, 1, 0.99)]), _table([(100, 100, 40, 40, 0, 0.5)])])
    # above 0.8 the teacher finds 3: the first kept, the second's class changed, the third's score fell to 0.5
    assert reproduced(0.8, teacher, student) == (3, 1)
    got = detections(teacher, student)
    assert got["0.8"] == {"teacher": 3, "reproduced": 1, "extra": 2}  # the relabelled box and the empty image's
    assert got["0.5"] == {"teacher": 4, "reproduced": 2, "extra": 2}
    assert got["0.8/0.5"] == {"teacher": 3, "reproduced": 1}  # the third's 0.5 is not above 0.5
    row = {"run": "fixed", "ratio": 41.0, "sparsity": 0.9, "bits": [4], "seconds": 3.0, "steps": None,
           "held_out": {"points": 0.0, "upper": 0.0}, "detections": got}
    text = table([row])
    assert "| yolov8n | fixed | 41.0× | 90.0% | 4 | 3 | 33.3% (1) | 33.3% (1) | 2 | 4 | 50.0% (2) |" in text
    assert "met by no run" in text
    failed = {"model": "yolov8n", "run": "size 30x", "error": "target_bytes=1 is below the smallest allocation"}
    assert "| yolov8n | size 30x | fails: target_bytes=1 is below" in table([row, failed])


def test_a_size_run_fits_the_bits_alone_to_the_size_without_a_budget():
    args = argparse.Namespace(time_limit=60.0, steps=1, batch_size=1)
    assert run_options("size 12x", args, Path(".")) == {"max_bytes": "12x", "sparsity": 0.0,
                                                    "max_drop": math.inf, "time_limit": 60.0}
    assert run_options("size 20x@0.5", args, Path("."))["sparsity"] == 0.5
    assert run_options("fixed", args, Path("."))["sparsity"] == 0.9

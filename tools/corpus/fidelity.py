"""How close a compressed corpus model stays to the original, on held-out inputs: each output's cosine and
one task metric per model (what a user of that model would check)."""
from __future__ import annotations

import numpy as np
import onnxruntime as ort

from evonnx.passes.engine.samples import take


def run_per_sample(session: ort.InferenceSession, arrays: dict[str, np.ndarray], axes: dict) -> list[list[np.ndarray]]:
    """Outputs of every sample run alone (works for fixed-batch models): [sample][output]."""
    n = next((v.shape[a] for k, v in arrays.items() if (a := axes[k]) is not None), 1)
    return [session.run(None, {k: take(v, axes[k], i, i + 1) for k, v in arrays.items()}) for i in range(n)]


def cosines(teacher: list[list[np.ndarray]], student: list[list[np.ndarray]]) -> list[float]:
    """Per output, the mean over samples of the cosine of the flattened outputs (1 where both are zero)."""
    out = []
    for k in range(len(teacher[0])):
        values = []
        for t, s in zip(teacher, student):
            a, b = t[k].astype(np.float64).ravel(), s[k].astype(np.float64).ravel()
            den = np.linalg.norm(a) * np.linalg.norm(b)
            values.append(1.0 if den == 0 and np.array_equal(a, b) else float(a @ b / den) if den else 0.0)
        out.append(float(np.mean(values)))
    return out


def task_metric(task: str, teacher: list[list[np.ndarray]], student: list[list[np.ndarray]]) -> tuple[str, float]:
    """(name, value) of the task metric on the first output; higher is better, 1.0 is the teacher."""
    t = [o[0] for o in teacher]
    s = [o[0] for o in student]
    if task == "classification":
        return "top-1 agreement", float(np.mean([a.argmax(-1).ravel()[0] == b.argmax(-1).ravel()[0] for a, b in zip(t, s)]))
    if task == "ctc":
        return "string agreement", float(np.mean([_ctc(a) == _ctc(b) for a, b in zip(t, s)]))
    if task == "detection":
        return "detections kept", _detections_kept(t, s)
    if task == "dense":
        return "mask IoU", _mask_iou(t, s)
    if task == "vad":
        return "speech/silence agreement", float(np.mean([(a > 0.5) == (b > 0.5) for a, b in zip(t, s)]))
    return "cosine", cosines(teacher, student)[0]


def _ctc(logits: np.ndarray) -> tuple[int, ...]:
    """Greedy CTC decoding (blank 0) of one sample's [T, C] scores, whichever axis holds the batch of 1."""
    scores = logits.reshape(-1, logits.shape[-1])
    ids = scores.argmax(-1)
    keep = np.r_[True, ids[1:] != ids[:-1]] & (ids != 0)
    return tuple(ids[keep].tolist())


def _detections_kept(teacher: list[np.ndarray], student: list[np.ndarray], conf: float = 0.5, iou: float = 0.5) -> float:
    """Of the teacher's candidate boxes with confidence above `conf`, the share the student also reports above
    `conf`, with the same class, at IoU >= `iou` (YOLOv8 [4+C, A] and YOLOX [A, 5+C] layouts)."""
    kept = total = 0
    for t, s in zip(teacher, student):
        tb, tc, tk = _boxes(t)
        sb, sc, sk = _boxes(s)
        hits = tc > conf
        total += int(hits.sum())
        ok = hits & (sc > conf) & (sk == tk) & (_iou(tb, sb) >= iou)
        kept += int(ok.sum())
    return kept / total if total else 1.0


def _boxes(out: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    x = out.reshape(out.shape[-2:]).astype(np.float64)
    if x.shape[0] < x.shape[1]:  # YOLOv8: [4 + classes, anchors], class scores already sigmoid
        boxes, scores = x[:4].T, x[4:].T
        return boxes, scores.max(1), scores.argmax(1)
    boxes, obj, cls = x[:, :4], x[:, 4], x[:, 5:]  # YOLOX: [anchors, 4 + objectness + classes]
    score = obj * (cls.max(1) if cls.shape[1] else 1.0)
    return boxes, score, cls.argmax(1) if cls.shape[1] else np.zeros(len(x), int)


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of centre-size boxes, row by row."""
    a0, a1 = a[:, :2] - a[:, 2:] / 2, a[:, :2] + a[:, 2:] / 2
    b0, b1 = b[:, :2] - b[:, 2:] / 2, b[:, :2] + b[:, 2:] / 2
    inter = np.clip(np.minimum(a1, b1) - np.maximum(a0, b0), 0, None).prod(1)
    union = np.abs(a[:, 2:]).prod(1) + np.abs(b[:, 2:]).prod(1) - inter
    return inter / np.maximum(union, 1e-12)


def _mask_iou(teacher: list[np.ndarray], student: list[np.ndarray], threshold: float = 0.3) -> float:
    """IoU of the foreground masks: per-pixel argmax for channels-last class maps, else scores above `threshold`."""
    inter = union = 0
    for t, s in zip(teacher, student):
        if t.ndim == 4 and t.shape[-1] <= 4 and t.shape[1] > 4:
            tm, sm = t.argmax(-1) > 0, s.argmax(-1) > 0
        else:
            tm, sm = t > threshold, s > threshold
        inter += int(np.sum(tm & sm))
        union += int(np.sum(tm | sm))
    return inter / union if union else 1.0


"""Task-aware fidelity: what a student loses against the teacher, in points, as its user would measure it.

A metric turns the teacher's and the student's outputs into one loss per sample, in points (0: as the
teacher; 100: nothing of it left). Their mean is the drop, and their spread gives its standard error, so a
budget can be checked at a confidence bound rather than at a lucky draw.

| name | for | loss of one sample |
|---|---|---|
| accuracy | classifiers with labels | 100 x (teacher right - student right) |
| agreement | classifiers | 100 when the student's top-1 differs from the teacher's |
| cosine | embeddings, anything | 100 x (1 - cosine) of the worst output (exact-match share for integers), over real tokens |
| cosine:mean, cosine:first | sentence embeddings from token outputs | the same, of the outputs pooled over their token axis: the mean of the real tokens (as sentence-transformers pools), or the first token (CLS) |
| ctc[:BLANK] | CTC recognisers, [N, T, C] | character error rate of the student's greedy string against the teacher's |
| detection[:LAYOUT[:CONF[:FOUND]]] | detectors | share of the teacher's detections above CONF the student misses (same class, IoU >= 0.5; the student's own above FOUND, default CONF) |
| dense[:THRESHOLD] | segmentation, saliency maps, per-sample decisions (VAD) | 100 x (1 - IoU) of the thresholded maps (both empty: IoU 1) |
| a callable | anything | `fn(teacher_outputs, student_outputs) -> score`, higher is better: drop = fn(t, t) - fn(t, s) |

Detection layouts: `yolov8` ([4 + classes, anchors], centre boxes, class scores), `yolox` / `yolov5`
([anchors, 4 + objectness + classes]) and `boxes` ([K, 6]: x1, y1, x2, y2, score, class, after NMS);
`auto` tells the first two apart by which axis is longer.

Padding: `drop` takes the real tokens of the samples ([samples, tokens], from the attention-mask input:
`real_tokens`); the cosine leaves out the rows of an output's token axis at pads, which nobody reads.
The pooled cosines read an output [samples, tokens, features] (axis 1 the tokens; with a mask, pads left out
of the mean); outputs of other ranks are compared whole. Pooling matters: a quantization error shared by a
sentence's tokens survives the mean while their differences partly cancel, so the pooled cosine can fall
below the per-token one.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
from rapidfuzz.distance import Levenshtein

from evonnx.errors import EvonnxError
from evonnx.passes.engine.metrics import is_classifier, kl_divergence
from evonnx.passes.engine.samples import Axis
from evonnx.passes.sparsity.tokens import row_keep, token_keep

Z_CHECK = 1.645  # one-sided 95 %: the final budget check takes the drop at its upper confidence bound
Z_CI = 1.96  # the two-sided 95 % interval a report states
MetricFn = Callable[[list[np.ndarray], list[np.ndarray]], float]


@dataclass(frozen=True)
class Drop:
    """A measured drop against the teacher, in points, with its standard error over `n` samples."""

    metric: str
    points: float
    se: float
    n: int
    details: dict = field(default_factory=dict)
    centre: float | None = None  # where the bound is taken from, when pseudo-samples move it off `points`

    def upper(self, z: float = Z_CHECK) -> float:
        return (self.points if self.centre is None else self.centre) + z * self.se

    def describe(self) -> str:
        spread = f" ± {Z_CI * self.se:.3g}" if self.se else ""
        return f"{self.metric} drop {self.points:.3g}{spread} points (n={self.n})"

    def as_dict(self) -> dict:
        return {"metric": self.metric, "points": self.points, "se": self.se, "ci95": Z_CI * self.se,
                "upper": self.upper(), "n": self.n, **self.details}


def per_sample(outputs: Sequence[np.ndarray], axes: Sequence[Axis]) -> list[np.ndarray]:
    """Each output with its sample axis first (an output without one counts as one sample)."""
    return [np.asarray(o)[None] if a is None else np.moveaxis(np.asarray(o), a, 0) for o, a in zip(outputs, axes)]


def output_groups(metric: "TaskMetric | None", teacher: Sequence[np.ndarray],
                  axes: Sequence[Axis]) -> list[np.ndarray | None]:
    """The metric's error groups of each output in the engine's layout (a size-1 sample axis where the output
    has one); all None without a metric."""
    if metric is None:
        return [None] * len(teacher)
    groups = metric.groups(per_sample(teacher, axes))
    return [g if g is None or a is None else np.expand_dims(g, a) for g, a in zip(groups, axes)]


class TaskMetric:
    """One task's metric over sample-first outputs (see `per_sample`)."""

    name: ClassVar[str]

    def losses(self, teacher: list[np.ndarray], student: list[np.ndarray],
               labels: np.ndarray | None) -> tuple[np.ndarray, dict]:
        """Per-sample losses in points, and details worth reporting."""
        raise NotImplementedError

    def check(self, teacher: list[np.ndarray], names: list[str], labels: np.ndarray | None) -> None:
        """Refuse outputs this metric cannot read (EvonnxError naming the output)."""

    def pseudo(self, teacher: list[np.ndarray]) -> tuple[float, ...]:
        """Pseudo-samples added to the losses for the bound (not to the measured drop). For per-sample
        losses that are all or nothing (a flipped prediction), none observed in n samples does not mean a
        rate of 0: one pseudo-sample of each kind gives the bound an Agresti-Coull-like floor of about
        100 / n points, as the interval of a proportion would."""
        return ()

    def groups(self, teacher: list[np.ndarray]) -> list[np.ndarray | None]:
        """Each output's error groups for the search's relative MSE (passes/engine/metrics.py), as ids 0..G-1
        broadcast against one sample of it (None: one group)."""
        return [None] * len(teacher)

    def real(self, outputs: list[np.ndarray], tokens: np.ndarray | None) -> list[np.ndarray]:
        """The outputs this metric reads, given the real tokens of the samples (all of them, unless a metric
        leaves pads out)."""
        return outputs

    def drop(self, teacher: list[np.ndarray], student: list[np.ndarray], labels: np.ndarray | None = None,
             tokens: np.ndarray | None = None) -> Drop:
        """The drop over sample-first outputs; `tokens`: [samples, tokens] bool, the real tokens (None: no
        padding known)."""
        losses, details = self.losses(self.real(teacher, tokens), self.real(student, tokens), labels)
        losses = np.asarray(losses, dtype=np.float64)
        n = len(losses)
        points = float(losses.mean()) if n else 0.0
        pseudo = self.pseudo(teacher)
        if pseudo:
            losses = np.concatenate([losses, pseudo])
        m = len(losses)
        se = float(losses.std(ddof=1) / np.sqrt(m)) if m > 1 else 0.0
        return Drop(self.label, points, se, n, details, float(losses.mean()) if pseudo else None)

    @property
    def label(self) -> str:
        return self.name


def _head(teacher: list[np.ndarray]) -> int | None:
    return next((i for i, t in enumerate(teacher) if is_classifier(t)), None)


def _classifier_check(name: str, teacher: list[np.ndarray], names: list[str]) -> None:
    if _head(teacher) is None:
        shapes = ", ".join(f"{n} {list(t.shape[1:])}" for n, t in zip(names, teacher))
        raise EvonnxError(f"--metric {name} needs a classifier output (float scores [N, classes]); outputs: {shapes}")


class Accuracy(TaskMetric):
    name = "accuracy"

    def pseudo(self, teacher):
        return (100.0, -100.0)  # one prediction lost, one gained

    def check(self, teacher, names, labels):
        _classifier_check(self.name, teacher, names)
        if labels is None:
            raise EvonnxError("--metric accuracy needs labels in the calibration data (an array named 'labels')")

    def losses(self, teacher, student, labels):
        h = _head(teacher)
        right_t, right_s = teacher[h].argmax(-1) == labels, student[h].argmax(-1) == labels
        details = {"teacher_accuracy": float(right_t.mean()), "accuracy": float(right_s.mean()),
                   "agreement": float(np.mean(teacher[h].argmax(-1) == student[h].argmax(-1))),
                   "kl": kl_divergence(teacher[h], student[h])}
        return 100.0 * (right_t.astype(np.float64) - right_s), details


class Agreement(TaskMetric):
    name = "agreement"

    def pseudo(self, teacher):
        return (100.0, 0.0)  # one prediction changed, one kept

    def check(self, teacher, names, labels):
        _classifier_check(self.name, teacher, names)

    def losses(self, teacher, student, labels):
        h = _head(teacher)
        same = teacher[h].argmax(-1) == student[h].argmax(-1)
        return 100.0 * ~same, {"agreement": float(same.mean()), "kl": kl_divergence(teacher[h], student[h])}


@dataclass
class Cosine(TaskMetric):
    pool: str = ""  # "", "mean" or "first" (module docstring)

    name = "cosine"
    POOLS: ClassVar[tuple[str, ...]] = ("", "mean", "first")

    def real(self, outputs, tokens):
        return [_pooled(o, tokens, self.pool) for o in outputs]

    @property
    def label(self) -> str:
        return f"cosine:{self.pool}" if self.pool else "cosine"

    def losses(self, teacher, student, labels):
        per_output = []
        for t, s in zip(teacher, student):
            if np.issubdtype(t.dtype, np.floating):
                per_output.append(1.0 - _cosines(t, s))
            else:  # integer outputs (ids, indices): the share of entries that differ
                diff = (t != s).reshape(len(t), -1)
                per_output.append(diff.mean(1) if diff.shape[1] else np.zeros(len(t)))
        worst = np.max(per_output, axis=0)
        return 100.0 * worst, {"cosine": [float(1 - p.mean()) for p in per_output]}


def real_tokens(calib) -> np.ndarray | None:
    """[samples, tokens] bool: the real tokens of calibration data by its attention-mask input (None: none)."""
    return token_keep(calib.inputs, calib.axes)


def zero_pads(output: np.ndarray, tokens: np.ndarray | None) -> np.ndarray:
    """A sample-first output with its rows at pad tokens zeroed (unchanged without a token axis): in teacher
    and student alike, they then add nothing to a cosine."""
    if tokens is None or output.ndim < 2 or len(output) != len(tokens):
        return output
    keep = row_keep(output.shape[:-1], 0, 1, tokens)
    return output if keep is None else output * keep.reshape(output.shape[:-1] + (1,))


def _pooled(output: np.ndarray, tokens: np.ndarray | None, pool: str) -> np.ndarray:
    """A sample-first output with pads zeroed, then pooled over its token axis by `pool` (see Cosine)."""
    output = zero_pads(output, tokens)
    if not pool or output.ndim != 3 or not np.issubdtype(output.dtype, np.floating):
        return output
    if pool == "first":
        return output[:, 0]
    if tokens is None or tokens.shape != output.shape[:2]:
        return output.mean(axis=1)
    count = np.maximum(tokens.sum(axis=1, dtype=np.float64), 1.0)[:, None]
    return output.sum(axis=1, dtype=np.float64) / count  # pads are zero already


def _cosines(teacher: np.ndarray, student: np.ndarray) -> np.ndarray:
    """Per-sample cosine of the flattened outputs (1 where both are zero)."""
    t = teacher.reshape(len(teacher), -1).astype(np.float64)
    s = student.reshape(t.shape).astype(np.float64)
    den = np.linalg.norm(t, axis=1) * np.linalg.norm(s, axis=1)
    zero = den == 0
    same = np.all(t == s, axis=1)
    return np.where(zero, same.astype(np.float64), np.sum(t * s, axis=1) / np.where(zero, 1.0, den))


@dataclass
class Ctc(TaskMetric):
    blank: int = 0
    name: ClassVar[str] = "ctc"

    def check(self, teacher, names, labels):
        if teacher[0].ndim != 3 or teacher[0].shape[-1] < 2:
            raise EvonnxError(f"--metric ctc reads the first output as per-step class scores [N, T, C]; "
                              f"{names[0]} is {list(teacher[0].shape)} with samples first")
        if not 0 <= self.blank < teacher[0].shape[-1]:
            raise EvonnxError(f"--metric ctc:{self.blank}: the blank must be a class of {names[0]} "
                              f"(0 to {teacher[0].shape[-1] - 1})")

    def losses(self, teacher, student, labels):
        ts, ss = greedy_ctc(teacher[0], self.blank), greedy_ctc(student[0], self.blank)
        cer = np.array([Levenshtein.distance(a, b) / len(a) if a else float(bool(b)) for a, b in zip(ts, ss)])
        return 100.0 * np.minimum(cer, 1.0), {"string_agreement": float(np.mean([a == b for a, b in zip(ts, ss)])),
                                              "cer": float(cer.mean())}


def greedy_ctc(scores: np.ndarray, blank: int = 0) -> list[list[int]]:
    """Greedy CTC decoding of [N, T, C] scores: best class per step, repeats merged, blanks dropped."""
    ids = scores.argmax(-1)
    keep = np.ones(ids.shape, bool)
    keep[:, 1:] = ids[:, 1:] != ids[:, :-1]
    keep &= ids != blank
    return [row[k].tolist() for row, k in zip(ids, keep)]


LAYOUTS = ("auto", "yolov8", "yolox", "yolov5", "boxes")


@dataclass
class Detection(TaskMetric):
    layout: str = "auto"
    conf: float = 0.5
    iou: float = 0.5
    found: float | None = None  # the student's detections that can find the teacher's: above this (None: conf)
    name: ClassVar[str] = "detection"

    @property
    def label(self) -> str:
        found = "" if self.found is None else f", found above {self.found:g}"
        return f"detection (conf > {self.conf:g}, IoU >= {self.iou:g}{found})"

    def check(self, teacher, names, labels):
        if self.layout not in LAYOUTS:
            raise EvonnxError(f"--metric detection:{self.layout}: the layout must be one of {', '.join(LAYOUTS)}")
        if teacher[0].ndim != 3 or min(teacher[0].shape[1:]) < (6 if self.layout == "boxes" else 5):
            raise EvonnxError(f"--metric detection reads the first output as one box table per image; "
                              f"{names[0]} is {list(teacher[0].shape)} with samples first")

    def losses(self, teacher, student, labels):
        """Per image, its missed detections over the mean count per image, so that the mean over images is
        the pooled share of all the teacher's detections that are missed (an image without any adds 0)."""
        missed, found = [], []
        for t, s in zip(teacher[0], student[0]):
            tb, tk = self._detections(t, self.conf)
            sb, sk = self._detections(s, self.conf if self.found is None else self.found)
            hit = (box_iou(tb, sb) >= self.iou) & (tk[:, None] == sk[None, :]) if len(tb) and len(sb) else \
                np.zeros((len(tb), len(sb)), bool)
            missed.append(len(tb) - int(hit.any(1).sum()))
            found.append(len(tb))
        per_image = max(sum(found), 1) / max(len(found), 1)
        return 100.0 * np.array(missed) / per_image, {"teacher_detections": sum(found)}

    def groups(self, teacher):
        """The table's box coordinates, objectness and class scores each on their own scale: boxes are in
        pixels and scores are probabilities, so one relative MSE over the table would see the boxes only."""
        table = teacher[0][0]
        if resolve_layout(table, self.layout) == "yolov8":  # rows: 4 box coordinates, then class scores
            ids = np.r_[np.zeros(4), np.ones(table.shape[0] - 4)][:, None]
        else:  # columns: 4 box coordinates, objectness (yolox, yolov5) or score (boxes), then classes
            ids = np.r_[np.zeros(4), 1, np.full(table.shape[1] - 5, 2)][None, :]
        return [ids.astype(np.int64)] + [None] * (len(teacher) - 1)

    def pseudo(self, teacher):
        """One image missing one detection and one missing none: without detections in the data, or with
        none missed among few, nothing is certified."""
        found = sum(len(self._detections(t, self.conf)[0]) for t in teacher[0])
        return (100.0 * len(teacher[0]) / max(found, 1), 0.0)

    def _detections(self, table: np.ndarray, conf: float) -> tuple[np.ndarray, np.ndarray]:
        """Corner boxes and classes of one image's detections above `conf`, after per-class NMS."""
        boxes, scores, classes = decode_boxes(table, self.layout)
        hit = scores > conf
        boxes, scores, classes = boxes[hit], scores[hit], classes[hit]
        keep = nms(boxes + classes[:, None] * (boxes.max(initial=0) + 1), scores, self.iou)
        return boxes[keep], classes[keep]


def decode_boxes(table: np.ndarray, layout: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(corner boxes [K, 4], scores [K], classes [K]) of one image's output table."""
    x = table.astype(np.float64)
    layout = resolve_layout(x, layout)
    if layout == "boxes":
        return x[:, :4], x[:, 4], x[:, 5].astype(np.int64)
    if layout == "yolov8":
        centre, cls = x[:4].T, x[4:].T
        score, label = cls.max(1), cls.argmax(1)
    else:
        centre, obj, cls = x[:, :4], x[:, 4], x[:, 5:]
        score = obj * cls.max(1) if cls.shape[1] else obj
        label = cls.argmax(1) if cls.shape[1] else np.zeros(len(x), np.int64)
    corners = np.concatenate([centre[:, :2] - centre[:, 2:] / 2, centre[:, :2] + centre[:, 2:] / 2], axis=1)
    return corners, score, label


def resolve_layout(table: np.ndarray, layout: str) -> str:
    """`auto` as yolov8 ([4 + classes, anchors]) when the table is wider than tall, else yolox."""
    if layout != "auto":
        return layout
    return "yolov8" if table.shape[0] < table.shape[1] else "yolox"


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every corner box of `a` with every one of `b`: [len(a), len(b)]."""
    lo = np.maximum(a[:, None, :2], b[None, :, :2])
    hi = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(hi - lo, 0, None).prod(-1)
    area = lambda z: np.clip(z[:, 2:] - z[:, :2], 0, None).prod(-1)  # noqa: E731
    return inter / np.maximum(area(a)[:, None] + area(b)[None, :] - inter, 1e-12)


def nms(boxes: np.ndarray, scores: np.ndarray, iou: float, top: int = 300) -> np.ndarray:
    """Indices kept by greedy non-maximum suppression (the `top` best-scored boxes considered)."""
    order = np.argsort(-scores, kind="stable")[:top]
    overlap = box_iou(boxes[order], boxes[order]) >= iou
    keep = np.ones(len(order), bool)
    for i in range(len(order)):  # over the few boxes above the threshold, not over anchors
        if keep[i]:
            keep[i + 1:] &= ~overlap[i, i + 1:]
    return order[keep]


@dataclass
class Dense(TaskMetric):
    threshold: float | None = None  # None: 0.5 for maps in [0, 1], else 0
    name: ClassVar[str] = "dense"

    def pseudo(self, teacher):
        one = int(np.prod(teacher[0].shape[1:])) == 1  # one decision per sample (a VAD's speech probability)
        return (100.0, 0.0) if one else ()

    def check(self, teacher, names, labels):
        if teacher[0].ndim < 2:
            raise EvonnxError(f"--metric dense reads the first output as a map (or scores) per sample; "
                              f"{names[0]} is {list(teacher[0].shape)} with samples first")

    def losses(self, teacher, student, labels):
        t, s = teacher[0].astype(np.float64), student[0].astype(np.float64)
        if 1 < t.shape[-1] <= 4 < t.shape[-2]:  # channels-last class map: the foreground is any class but 0
            tm, sm = t.argmax(-1) > 0, s.argmax(-1) > 0
        else:
            threshold = self.threshold if self.threshold is not None else 0.5 if 0 <= t.min() and t.max() <= 1 else 0.0
            tm, sm = t > threshold, s > threshold
        tm, sm = tm.reshape(len(t), -1), sm.reshape(len(s), -1)
        union = (tm | sm).sum(1)
        iou = np.where(union > 0, (tm & sm).sum(1) / np.maximum(union, 1), 1.0)
        peak = float(t.max() - t.min()) or 1.0
        mse = float(np.mean((t - s) ** 2))
        psnr = float("inf") if mse == 0 else 10 * np.log10(peak * peak / mse)
        return 100.0 * (1.0 - iou), {"iou": float(iou.mean()), "psnr_db": psnr}


@dataclass
class UserMetric(TaskMetric):
    """A user's score function over the teacher's and the student's outputs (the engine's own layout)."""

    fn: MetricFn = None
    axes: Sequence[Axis] = ()
    name: ClassVar[str] = "callable"

    @property
    def label(self) -> str:
        return getattr(self.fn, "__name__", "callable")

    def drop(self, teacher, student, labels=None, tokens=None) -> Drop:
        t = [np.moveaxis(o, 0, a) if a is not None else o[0] for o, a in zip(teacher, self.axes)]
        s = [np.moveaxis(o, 0, a) if a is not None else o[0] for o, a in zip(student, self.axes)]
        base, got = float(self.fn(t, t)), float(self.fn(t, s))
        return Drop(self.label, base - got, 0.0, len(teacher[0]), {"teacher_score": base, "score": got})


def pick(metric: str | MetricFn | None, teacher: list[np.ndarray], names: list[str], labels: np.ndarray | None,
         axes: Sequence[Axis] = ()) -> TaskMetric:
    """The metric named by `metric` (see the module docstring), or for None/"auto" the one the outputs make
    unambiguous: accuracy for a classifier with labels, agreement for one without, else cosine."""
    if callable(metric):
        return UserMetric(metric, axes)
    text = metric or "auto"
    kind, _, arg = text.partition(":")
    try:
        if kind == "auto":
            chosen: TaskMetric = (Cosine() if _head(teacher) is None else
                                  Accuracy() if labels is not None else Agreement())
        elif kind in ("accuracy", "agreement") and not arg:
            chosen = {"accuracy": Accuracy, "agreement": Agreement}[kind]()
        elif kind == "cosine" and arg in Cosine.POOLS:
            chosen = Cosine(arg)
        elif kind == "ctc":
            chosen = Ctc(int(arg) if arg else 0)
        elif kind == "detection":
            layout, _, rest = arg.partition(":")
            conf, _, found = rest.partition(":")
            chosen = Detection(layout or "auto", float(conf) if conf else 0.5, found=float(found) if found else None)
        elif kind == "dense":
            chosen = Dense(float(arg) if arg else None)
        else:
            raise EvonnxError(f"--metric {text!r}: expected auto, accuracy, agreement, cosine[:mean|:first], "
                              f"ctc[:BLANK], detection[:LAYOUT[:CONF[:FOUND]]] or dense[:THRESHOLD]")
    except ValueError:
        raise EvonnxError(f"--metric {text!r}: a number was expected after the colon") from None
    chosen.check(teacher, names, labels)
    return chosen

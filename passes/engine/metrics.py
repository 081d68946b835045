"""Teacher–student metrics for every output: KL, top-1 agreement, relative MSE, cosine, accuracy.

Relative MSE is the squared error over the teacher's energy. An output whose parts live on different
scales (a detector's box coordinates in pixels beside its class probabilities) can be split into error
groups (`groups`: an id 0..G-1 per entry, broadcast against the output); each group's error is then taken
over its own energy and the groups are averaged, so that no part drowns the others.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


def is_classifier(teacher: np.ndarray) -> bool:
    """Float outputs of shape (N, C) with C >= 2 are read as class scores."""
    return teacher.ndim == 2 and teacher.shape[1] >= 2 and np.issubdtype(teacher.dtype, np.floating)


def is_probability(teacher: np.ndarray) -> bool:
    """Class scores that are already probabilities (a softmax inside the model): each row sums to 1."""
    return bool(teacher.size and teacher.min() >= 0 and teacher.max() <= 1
                and np.allclose(teacher.sum(axis=-1, dtype=np.float64), 1.0, atol=1e-3))


def log_probs(x: np.ndarray, probabilities: bool) -> np.ndarray:
    """Log class probabilities of scores along the last axis: log-softmax of logits, or the log of
    probabilities (a softmax of probabilities would flatten them and hide changed predictions)."""
    x = x.astype(np.float64)
    if probabilities:
        return np.log(np.clip(x, 1e-12, None))
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def kl_divergence(teacher: np.ndarray, student: np.ndarray) -> float:
    """Mean over samples of KL(teacher || student) of the class distributions, in nats."""
    probs = is_probability(teacher)
    lt, ls = log_probs(teacher, probs), log_probs(student, probs)
    return float(np.mean(np.sum(np.exp(lt) * (lt - ls), axis=-1)))


def top1_agreement(teacher: np.ndarray, student: np.ndarray) -> float:
    return float(np.mean(teacher.argmax(-1) == student.argmax(-1)))


def error_weights(teacher: np.ndarray, groups: np.ndarray | None = None,
                  keep: np.ndarray | None = None) -> np.ndarray | float:
    """Weights w with sum(w * (student - teacher)**2) the relative MSE: per entry, one over the teacher's energy
    in the entry's group times the number of groups (one group: a scalar); `keep` (broadcast against the
    output) leaves entries out of both the error and the energy."""
    t = teacher.astype(np.float64) if keep is None else teacher.astype(np.float64) * keep
    if groups is None:
        scale = 1.0 / max(float(np.sum(t * t)), 1e-30)
        return scale if keep is None else scale * keep
    index = np.broadcast_to(groups, t.shape)
    energy = np.bincount(index.ravel(), weights=(t * t).ravel())
    weights = (1.0 / (len(energy) * np.maximum(energy, 1e-30)))[index]
    return weights if keep is None else weights * keep


def relative_mse(teacher: np.ndarray, student: np.ndarray, groups: np.ndarray | None = None) -> float:
    diff = student.astype(np.float64) - teacher.astype(np.float64)
    return float(np.sum(error_weights(teacher, groups) * diff * diff))


def cosine(teacher: np.ndarray, student: np.ndarray) -> float:
    """Mean over samples of the cosine similarity of flattened outputs."""
    t = teacher.reshape(len(teacher), -1).astype(np.float64) if teacher.ndim else teacher.reshape(1, 1)
    s = student.reshape(t.shape).astype(np.float64)
    num = np.sum(t * s, axis=1)
    den = np.linalg.norm(t, axis=1) * np.linalg.norm(s, axis=1)
    both_zero = den == 0
    return float(np.mean(np.where(both_zero, 1.0, num / np.where(both_zero, 1.0, den))))


@dataclass
class OutputMetrics:
    name: str
    rel_mse: float
    cosine: float
    kl: float | None = None
    top1: float | None = None
    accuracy: float | None = None


@dataclass
class Metrics:
    """All outputs' metrics; `fitness` is the scalar to minimise (mean KL of classifiers, else mean relative MSE)."""

    outputs: list[OutputMetrics] = field(default_factory=list)

    @property
    def fitness(self) -> float:
        kls = [o.kl for o in self.outputs if o.kl is not None]
        return float(np.mean(kls)) if kls else float(np.mean([o.rel_mse for o in self.outputs]))

    @property
    def accuracy(self) -> float | None:
        return next((o.accuracy for o in self.outputs if o.accuracy is not None), None)

    @property
    def min_cosine(self) -> float:
        """The lowest output's mean per-sample cosine to the reference."""
        return min((o.cosine for o in self.outputs), default=1.0)

    @property
    def top1(self) -> float | None:
        return next((o.top1 for o in self.outputs if o.top1 is not None), None)

    def as_dict(self) -> dict:
        return {"fitness": self.fitness, "outputs": [vars(o) for o in self.outputs]}


def compare(names: list[str], teacher: list[np.ndarray], student: list[np.ndarray],
            labels: np.ndarray | None = None, groups: list[np.ndarray | None] | None = None) -> Metrics:
    """Metrics of every output; accuracy on the first classifier output when labels are given; `groups`:
    each output's error groups (None: one)."""
    result, labelled = Metrics(), False
    for name, t, s, g in zip(names, teacher, student, groups or [None] * len(names)):
        if not np.issubdtype(t.dtype, np.floating):  # integer outputs (indices, ids): exact-match rate
            match = float(np.mean(t == s)) if t.size else 1.0
            result.outputs.append(OutputMetrics(name, rel_mse=1.0 - match, cosine=match))
            continue
        out = OutputMetrics(name, relative_mse(t, s, g), cosine(t, s))
        if is_classifier(t):
            out.kl, out.top1 = kl_divergence(t, s), top1_agreement(t, s)
            if labels is not None and not labelled and len(labels) == len(s):
                out.accuracy, labelled = float(np.mean(s.argmax(-1) == labels)), True
        result.outputs.append(out)
    return result

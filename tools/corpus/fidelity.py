"""How close a compressed corpus model stays to the original on held-out inputs: the model's task metric
(passes/engine/tasks.py, the one `compress --metric` checks its budget in) and the lowest output's cosine."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

from evonnx.passes.base import PassContext
from evonnx.passes.engine.calib import load_npz
from evonnx.passes.engine.samples import join, take
from evonnx.passes.engine.tasks import Cosine, per_sample, pick
from evonnx.passes.state import load_state


class Reference:
    """The original model's outputs on held-out inputs, and the metric to compare others by."""

    def __init__(self, model: Path, inputs: Path, metric: str):
        state = load_state(str(model))
        self.data = load_npz(inputs, state.model)
        engine = PassContext(self.data, device="cpu", progress=False).engine(state, [])
        self.axes, self.names = engine.axes, engine.output_names
        self.teacher = per_sample(engine.teacher, self.axes)
        self.metric = pick(metric, self.teacher, self.names, None, self.axes)

    def outputs(self, session: ort.InferenceSession) -> list[np.ndarray]:
        """Another model's outputs on the held-out inputs, sample-first, each sample run alone (so fixed-batch
        models and every decode form run the same way)."""
        n, data = self.data.num_samples, self.data
        runs = [session.run(None, {k: take(v, data.axes[k], i, i + 1) for k, v in data.inputs.items()})
                for i in range(n)]
        return per_sample([join([r[k] for r in runs], a) for k, a in enumerate(self.axes)], self.axes)

    def measure(self, session: ort.InferenceSession) -> dict:
        """The task metric's drop (points) and the lowest output's mean cosine of another model."""
        student = self.outputs(session)
        drop = self.metric.drop(self.teacher, student)
        cosines = Cosine().drop(self.teacher, student).details["cosine"]
        return {"metric": drop.metric, "drop": float(drop.points), "cos": float(np.min(cosines))}

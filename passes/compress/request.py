"""A compress request: what a run is asked, typed, defaulted and checked before any work starts."""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from evonnx.errors import EvonnxError
from evonnx.passes.engine.calib import HOLDOUT, SYNTHETIC_SAMPLES
from evonnx.passes.engine.tasks import MetricFn
from evonnx.passes.pipeline import Pipeline

DEFAULT_MAX_DROP = 0.5  # points of the task metric, when neither --max-drop nor --max-bytes is given
SIZED_SPARSITY = 0.9  # the sparsity of a --max-bytes run that names none; the bit allocation fits the size


@dataclass(frozen=True)
class CompressRequest:
    """`evonnx.compress(model, output, **options)` takes these fields as its keywords.

    Data: `calib` is an .npz path or Python data (passes/engine/calib.py `from_python`: a dict of arrays, an
    iterable of batch dicts, an onnxruntime CalibrationDataReader), 'labels' optional; without it random
    inputs stand in only with `synthetic_ok`. `batch_axes` names inputs' sample axes (None: none) where the
    model's dims don't tell; `input_shapes` fixes other dynamic dims; `holdout` is the share no pass fits to.

    Budget: `max_drop` points of `metric` (passes/engine/tasks.py: a name, a callable(teacher_outputs,
    student_outputs) -> score, or None to pick from the outputs) against the teacher, on the held-out share at
    its 95 % upper bound. None: 0.5 points, or with `max_bytes` (a byte count, or "100x": the model's file
    size / 100) no fidelity bound; math.inf: none enforced (the drop is reported).

    Search: `sparsity` None is budget-driven ("auto"; 0.9 for `max_bytes` runs), a number fixes it; `bits`
    "auto" or a width; `pipeline` a Pipeline or a TOML/JSON/YAML file instead of the default; `time_limit`
    seconds for the whole run (the default pipeline's searches sized to fit; not with `pipeline`, whose passes
    keep their own budgets); `seed`.

    Where: `device` auto | cpu | cuda; `workers` (a local Ray runtime with that many actors) or
    `ray_address` (a running Ray cluster) score Directed Evolution's candidates and measure the bit
    allocation's layers on Ray actors (passes/engine/distributed.py).

    Files: `workdir` keeps checkpoints (`resume` continues a run there); `report` writes report.md,
    summary.json and plots."""

    model: str | Path | bytes
    output: str | Path  # a Path once made
    calib: Any = None
    input_shapes: dict[str, list[int]] | None = None
    batch_axes: dict[str, int | None] | None = None
    samples: int = SYNTHETIC_SAMPLES
    synthetic_ok: bool = False
    holdout: float = HOLDOUT
    max_drop: float | None = None
    metric: str | MetricFn | None = None
    max_bytes: int | str | None = None
    sparsity: float | str | None = None
    bits: int | str = "auto"
    pipeline: Pipeline | str | Path | None = None
    time_limit: float | None = None
    seed: int = 0
    device: str = "auto"
    workers: int | None = None
    ray_address: str | None = None
    progress: bool = True
    workdir: str | Path | None = None
    resume: bool = False
    report: str | Path | None = None

    def __post_init__(self) -> None:
        self._check()
        set_ = object.__setattr__  # resolved defaults, on a frozen record
        set_(self, "output", Path(self.output))
        if isinstance(self.pipeline, (str, Path)):
            set_(self, "pipeline", Pipeline.from_file(self.pipeline))
        if self.sparsity is None and self.pipeline is None:
            set_(self, "sparsity", SIZED_SPARSITY if self.max_bytes is not None else "auto")
        if self.max_drop is None and not self.max_bytes:
            set_(self, "max_drop", DEFAULT_MAX_DROP)

    def _check(self) -> None:
        """Refuse options out of range or in conflict (a negative time limit or budget means nothing)."""
        if self.time_limit is not None and not (math.isfinite(self.time_limit) and self.time_limit > 0):
            raise EvonnxError(f"--time-limit must be a positive number of seconds, not {self.time_limit:g}")
        if self.max_drop is not None and not (self.max_drop >= 0):  # inf: no budget; NaN fails
            raise EvonnxError(f"--max-drop must be a number of points >= 0 (inf: none), not {self.max_drop:g}")
        if self.samples < 1:
            raise EvonnxError(f"--samples must be at least 1, not {self.samples}")
        if not 0 <= self.holdout < 1:
            raise EvonnxError(f"--holdout must be a share in [0, 1), not {self.holdout:g}")
        if not Path(self.output).parent.exists():
            raise EvonnxError(f"{self.output}: folder {Path(self.output).parent} does not exist")
        if self.resume and self.workdir is None:
            raise EvonnxError("resuming needs the work dir of the run (--workdir)")
        if self.sparsity is not None and self.pipeline is not None:
            raise EvonnxError("--sparsity drives the default pipeline; it cannot be combined with --config")
        if self.time_limit is not None and self.pipeline is not None:
            raise EvonnxError("--time-limit sizes the default pipeline's searches; a --config pipeline runs on its "
                              "passes' own budgets (time_limit of directed-evolution and distill-finetune), so the "
                              "two cannot be combined")

    @property
    def enforced(self) -> float | None:
        """The budget in points that a result must meet (None: reported only)."""
        return self.max_drop if self.max_drop is not None and math.isfinite(self.max_drop) else None

    @property
    def aim(self) -> float:
        """The drop the passes aim at: the budget, or DEFAULT_MAX_DROP when none is enforced."""
        return self.enforced if self.enforced is not None else DEFAULT_MAX_DROP

"""What a compress run returns: sizes, fidelity against the teacher, per-layer rows, and why things were left alone."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np

from evonnx.formats.stats import ContainerStats
from evonnx.formats.tensor import QuantizedTensor
from evonnx.passes.state import ModelState

INTERNAL = ("history", "search_log")  # CompressResult fields for reports, not the JSON summary


@dataclass
class CompressResult:
    """What `compress` did: sizes, fidelity against the teacher, per-layer rows, what it left alone and why."""

    output: str
    original_bytes: int
    container_bytes: int
    ratio: float
    sparsity: float
    provider: str
    seconds: float
    teacher_accuracy: float | None
    accuracy: float | None
    top1_agreement: float | None
    fitness: float
    max_output_diff: float
    metric: str = ""  # the task metric the budget is measured in (passes/engine/tasks.py)
    max_drop: float | None = None  # the budget in points of `metric` (None: reported only)
    held_out: dict = field(default_factory=dict)  # the shipped result's drop on data no pass fitted to
    calibration: dict = field(default_factory=dict)  # the same on the samples the search fitted to (optimistic)
    shipped: str = "the searched result"  # or the fallback the budget guard shipped instead
    rejected: list[dict] = field(default_factory=list)  # results the guard measured beyond the budget
    layers: list[dict] = field(default_factory=list)
    skipped: list[dict] = field(default_factory=list)  # tensors left untouched (already quantized, ...) and why
    lossless: list[dict] = field(default_factory=list)  # already-quantized integer tensors, coded losslessly
    kept_exact: list[str] = field(default_factory=list)  # targets the calibration data never exercises
    notes: list[str] = field(default_factory=list)
    auto: list[dict] = field(default_factory=list)  # the trials of sparsity="auto"
    history: list[dict] = field(default_factory=list, repr=False)  # the passes' records
    search_log: list[dict] = field(default_factory=list, repr=False)  # Directed Evolution's log.jsonl entries

    def as_dict(self) -> dict:
        """The summary (JSON-ready), without the passes' records and search logs."""
        return {f.name: jsonable(getattr(self, f.name)) for f in dataclasses.fields(self) if f.name not in INTERNAL}


def layer_rows(state: ModelState, records: list[QuantizedTensor], stats: ContainerStats) -> list[dict]:
    """Per float weight: role, shape, sparsity, scheme, code width (`bits`: an entropy-sized grid's is 8 whatever
    its rate) and the record's bytes in the container (`coded_bytes`)."""
    coded = {t.name: t.coded_bytes for t in stats.tensors}
    rows = []
    for r in records:
        if r.name not in state.table.weights:
            continue  # an already-quantized integer tensor: `lossless_rows`
        info = state.table[r.name]
        rows.append({"name": r.name, "role": info.role, "shape": list(r.shape), "sparsity": round(r.sparsity, 4),
                     "scheme": r.scheme, "bits": r.bits, "coded_bytes": coded[r.name]})
    return rows


def lossless_rows(stats: ContainerStats) -> list[dict]:
    """Per integer record: its coded bytes (whole record), the value codec chosen, and zstd-19's bytes."""
    return [{"name": t.name, "dtype": t.dtype, "shape": t.shape, "coded_bytes": t.coded_bytes,
             "value_codec": t.value_codec, "zstd_bytes": t.zstd_bytes}
            for t in stats.tensors if t.zstd_bytes is not None]


def jsonable(value):
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist() if value.size <= 64 else f"<array {value.shape}>"
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)

"""`evonnx.compress`: load → passes → encode → decode and verify → report. The CLI's `compress` calls this."""
from __future__ import annotations

import dataclasses
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import onnx

from evonnx.errors import EvonnxError
from evonnx.formats.container import encode_evx, read_evx
from evonnx.formats.tensor import QuantizedTensor
from evonnx.passes.base import PassContext
from evonnx.passes.engine.calib import load_npz, synthetic
from evonnx.passes.pipeline import Pipeline
from evonnx.passes.state import ModelState, load_state
from evonnx.runtime.decode import build_model
from evonnx.formats.atomic import atomic_write_bytes
from evonnx.runtime.weights import read_weights


@dataclass
class CompressResult:
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
    layers: list[dict] = field(default_factory=list)

    def as_dict(self) -> dict:
        return asdict(self)


def default_pipeline(sparsity: float | str, bits: int | str, max_drop: float, time_limit: float | None,
                     seed: int) -> Pipeline:
    """Directed Evolution to the sparsity target, then the bit allocation (or fixed bits)."""
    steps: list = []
    if sparsity not in (0, 0.0, "0"):
        de = {"sparsity": float(sparsity) if sparsity != "auto" else 0.9}
        if time_limit:  # the search stops early, then reaches the target the cheap way
            de.update(time_limit=float(time_limit) * 0.7, on_budget="finish")
        steps.append(("directed-evolution", de))
    if bits == "auto":
        steps.append(("bit-allocation", {"max_drop": float(max_drop)}))
    else:
        steps.append(("quantize", {"bits": int(bits)}))
    return Pipeline(steps)


def to_container(state: ModelState) -> tuple[onnx.ModelProto, list[QuantizedTensor], dict[str, np.ndarray]]:
    """The graph without its float weights, one record per float weight, and the weights they stand for."""
    records, expected = [], {}
    for info in state.table:
        if info.name in state.quant:
            record = state.quant[info.name]
        else:
            record = QuantizedTensor.raw(info.name, state.current(info.name), state.masks.get(info.name))
        records.append(record)
        expected[info.name] = state.current(info.name)
    graph = onnx.ModelProto()
    graph.CopyFrom(state.model)
    kept = [t for t in graph.graph.initializer if t.name not in expected]
    del graph.graph.initializer[:]
    graph.graph.initializer.extend(kept)
    return graph, records, expected


def compress(model: str | Path, output: str | Path, *, calib: str | Path | None = None,
             input_shapes: dict[str, list[int]] | None = None, samples: int = 256,
             sparsity: float | str = 0.9, bits: int | str = "auto", max_drop: float = 0.5,
             time_limit: float | None = None, seed: int = 0, workdir: str | Path | None = None,
             pipeline: Pipeline | str | Path | None = None, device: str = "auto", progress: bool = True,
             log: Callable[[str], None] = print) -> CompressResult:
    """Compress an ONNX model into an .evx container, decode it again and verify it before returning."""
    start = time.perf_counter()
    output = Path(output)
    if not output.parent.exists():
        raise EvonnxError(f"{output}: folder {output.parent} does not exist")
    state = load_state(model)
    data = load_npz(calib, state.model, input_shapes) if calib else synthetic(state.model, samples, input_shapes, seed)
    ctx = PassContext(data, device=device, seed=seed, workdir=Path(workdir) if workdir else None,
                      progress=progress, log=log)
    if isinstance(pipeline, (str, Path)):
        pipeline = Pipeline.from_file(pipeline)
    pipeline = pipeline or default_pipeline(sparsity, bits, max_drop, time_limit, seed)
    engine = ctx.engine(state)
    state = pipeline.run(state, ctx)

    graph, records, expected = to_container(state)
    meta = {"source": Path(str(model)).name, "seed": seed,  # deterministic: no timings, so runs compare by bytes
            "pipeline": [{"name": p.name, **_jsonable(dataclasses.asdict(p.config))} for p in pipeline.passes]}
    blob = encode_evx(graph, records, meta)
    decoded = build_model(read_evx(blob))
    _check_weights(decoded, expected)
    measured = engine.outputs({n: state.current(n) for n in engine.weight_names})
    shipped = engine.model_outputs(decoded, "decoded")
    diff = max(float(np.max(np.abs(a.astype(np.float64) - b))) if a.size else 0.0 for a, b in zip(measured, shipped))
    scale = max(float(np.max(np.abs(m))) if m.size else 0.0 for m in measured) or 1.0
    if diff > 1e-4 * scale:
        raise EvonnxError(f"verification failed: the decoded model's outputs differ from the measured ones by {diff:g}")
    atomic_write_bytes(output, blob)

    metrics = engine.evaluate([{n: state.current(n) for n in engine.weight_names}])[0]
    original = Path(model).stat().st_size if not isinstance(model, (bytes, bytearray)) else len(model)
    return CompressResult(
        output=str(output), original_bytes=original, container_bytes=len(blob), ratio=original / len(blob),
        sparsity=state.global_sparsity(), provider=engine.provider, seconds=time.perf_counter() - start,
        teacher_accuracy=engine.teacher_metrics().accuracy, accuracy=metrics.accuracy, top1_agreement=metrics.top1,
        fitness=metrics.fitness, max_output_diff=diff, layers=_layers(state, records))


def _check_weights(decoded: onnx.ModelProto, expected: dict[str, np.ndarray]) -> None:
    got = read_weights(decoded, list(expected))
    for name, want in expected.items():
        have = got[name]
        if have.shape != want.shape or have.tobytes() != np.ascontiguousarray(want, dtype=have.dtype).tobytes():
            raise EvonnxError(f"verification failed: decoded weight {name!r} differs from the searched one")


def _layers(state: ModelState, records: list[QuantizedTensor]) -> list[dict]:
    rows = []
    for r in records:
        info = state.table[r.name]
        rows.append({"name": r.name, "role": info.role, "shape": list(r.shape), "sparsity": round(r.sparsity, 4),
                     "scheme": r.scheme, "bits": r.bits})
    return rows


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist() if value.size <= 64 else f"<array {value.shape}>"
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)

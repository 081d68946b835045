"""From a searched state to a verified container: records, metadata, and the decode-and-compare check."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from evonnx.errors import EvonnxError
from evonnx.formats.container import encode_evx, read_evx
from evonnx.formats.stats import ContainerStats
from evonnx.formats.dtypes import ELEM_TYPES
from evonnx.formats.tensor import QuantizedTensor, dequantize
from evonnx.passes.base import Pass
from evonnx.passes.engine.fitness import Runner
from evonnx.passes.compress.result import jsonable
from evonnx.passes.pipeline import Pipeline
from evonnx.passes.state import ModelState
from evonnx.runtime.model_io import without_initializers


def to_container(state: ModelState) -> tuple[onnx.ModelProto, list[QuantizedTensor], dict[str, np.ndarray]]:
    """The graph without its recorded weights, one record per float weight, per already-quantized integer
    weight (lossless) and per weight only a Resize reads (rounded to fp16: the search cannot feed those, and the
    budget is checked on the decoded model), and the weights they stand for."""
    records, expected = [], {}
    for info in state.table:
        if info.name in state.quant:
            record = state.quant[info.name]
        else:
            record = QuantizedTensor.raw(info.name, state.current(info.name), state.masks.get(info.name))
        records.append(record)
        expected[info.name] = state.current(info.name)
    for name in state.table.lossless:
        expected[name] = state.original(name)
        records.append(QuantizedTensor.raw(name, expected[name]))
    for name, value in resampled(state).items():
        expected[name] = value
        records.append(QuantizedTensor.raw(name, value))
    return without_initializers(state.model, set(expected)), records, expected


def resampled(state: ModelState) -> dict[str, np.ndarray]:
    """The weights only a Resize reads (position embeddings fitted to the input's grid), rounded to fp16 and
    kept in their dtype."""
    out = {}
    for name in state.table.resampled:
        value = state.original(name)
        out[name] = value.astype(np.float16).astype(value.dtype) if value.dtype.itemsize > 2 else value
    return out


@dataclass
class Verified:
    """A container that decodes to the searched weights, and the outputs it was checked by."""

    blob: bytes
    records: list[QuantizedTensor]
    stats: ContainerStats  # of the blob, read back
    measured: list[np.ndarray]  # the student's outputs on the calibration batches, weights baked
    max_diff: float  # the largest difference of the decoded model's outputs from those
    held_out: list[np.ndarray] | None  # the decoded model's outputs on the held-out engine's batches


def encode_and_verify(state: ModelState, engine, meta: dict, held_engine=None) -> Verified:
    """The container of `state`, after checking that it decodes to the searched weights and outputs; with
    `held_engine`, the decoded model's outputs on its data too (the same session).

    The outputs are those of the student with its weights baked in, as it ships: ONNX Runtime optimises a
    graph with constant weights differently from one with weights fed as inputs (as the search runs it),
    and a deep network can amplify that rounding (3e-3 at a ViT's output). The decoded weights are the
    decoder's own (`dequantize` of each record, what `build_model` puts into the container's graph), checked
    one at a time to equal the searched arrays in dtype, shape and bytes; the session then takes the searched
    arrays beside the container's graph, so neither a second copy of the weights nor a model proto holds them."""
    graph, records, expected = to_container(state)
    blob = encode_evx(graph, records, meta)
    del graph
    measured = engine.model_outputs(state.model, "student", expected)
    container = read_evx(blob)
    stats, decoded_graph = container.stats, container.graph
    _check_weights(container.tensors, expected)
    del container
    runner = Runner(_declared(decoded_graph, expected), engine.providers, "decoded", expected)
    del decoded_graph
    shipped = engine.runner_outputs(runner)
    diff = max((float(np.max(np.abs(a.astype(np.float64) - b))) if a.size else 0.0
                for a, b in zip(measured, shipped)), default=0.0)
    scale = max((float(np.max(np.abs(m))) if m.size else 0.0 for m in measured), default=0.0) or 1.0
    if diff > 1e-4 * scale:
        raise EvonnxError(f"verification failed: the decoded model's outputs differ from the measured ones by {diff:g}")
    held = held_engine.runner_outputs(runner) if held_engine is not None else None
    return Verified(blob, records, stats, measured, diff, held)


def _declared(model: onnx.ModelProto, weights: dict[str, np.ndarray]) -> onnx.ModelProto:
    """`model` with a data-free initializer (name, type, shape) for each of `weights`, whose values a session
    then takes (passes/engine/session.py)."""
    for name, value in weights.items():
        model.graph.initializer.add(name=name, data_type=ELEM_TYPES[value.dtype.name], dims=value.shape)
    return model


def _check_weights(records: list[QuantizedTensor], expected: dict[str, np.ndarray]) -> None:
    """The decoded weights are the expected ones, dtype, shape and bytes (decoded one record at a time)."""
    names = {t.name for t in records}
    if names != set(expected):
        raise EvonnxError(f"verification failed: decoded model lacks {sorted(set(expected) - names)[:3]}")
    for record in records:
        have, want = dequantize(record), np.asarray(expected[record.name])
        bits = f"u{have.dtype.itemsize}" if have.dtype.itemsize in (1, 2, 4, 8) else "u1"  # -0.0 and NaN too
        if have.dtype != want.dtype or have.shape != want.shape or not np.array_equal(
                have.reshape(-1).view(bits), want.reshape(-1).view(bits)):  # reshape copies a strided one
            raise EvonnxError(f"verification failed: decoded weight {record.name!r} differs from the searched one")


def describe(pipeline: Pipeline, full: bool = False) -> list[dict]:
    """Each pass with the settings that differ from its defaults, as the container's metadata records it
    (the manifest's `producer` names the version whose defaults the rest are); `full`: every setting."""
    return [step(p, full) for p in pipeline.passes]


def step(p: Pass, full: bool = False) -> dict:
    settings = jsonable(dataclasses.asdict(p.config)) if full else _changed(p.config, type(p.config)())
    return {"name": p.name, **settings}


def _changed(config, default) -> dict:
    """The settings that differ from the defaults; of an option group, only its changed fields."""
    out = {}
    for f in dataclasses.fields(config):
        value, base = getattr(config, f.name), getattr(default, f.name)
        if dataclasses.is_dataclass(value):
            if changed := _changed(value, base):
                out[f.name] = changed
        elif jsonable(value) != jsonable(base):
            out[f.name] = jsonable(value)
    return out


def run_meta(source: str, seed: int, steps: list[dict], trials: list | None = None) -> dict:
    """The metadata a compressed file carries (deterministic: runs compare by bytes)."""
    return {"source": source, "seed": seed, "pipeline": steps, **({"auto": trials} if trials else {})}


def source_bytes(model: str | Path | bytes) -> int:
    """Bytes the model takes on disk: the .onnx file plus the external data files it names."""
    if isinstance(model, (bytes, bytearray)):
        return len(model)
    path = Path(model)
    if not path.is_file():
        return 0  # load_state reports the missing file
    total = path.stat().st_size
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception:  # noqa: BLE001 - load_state reports unreadable models
        return total
    locations = {entry.value for t in onnx.external_data_helper._get_all_tensors(proto)
                 for entry in t.external_data if entry.key == "location"}
    return total + sum((path.parent / loc).stat().st_size for loc in locations if (path.parent / loc).is_file())

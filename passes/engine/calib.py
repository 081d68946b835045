"""Calibration inputs: from an .npz keyed by input name (optional `labels`), or synthetic from input shapes."""
from __future__ import annotations

import re
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from evonnx.errors import CalibrationError

LABELS = "labels"


@dataclass
class InputSpec:
    name: str
    dtype: np.dtype
    shape: list[int | str | None]  # ints are fixed, str/None are dynamic


@dataclass
class CalibData:
    """Named input arrays sharing the sample axis 0, optional labels, and where they came from.

    Scalar (0-d) inputs such as flags are not batched: every batch gets the same value.
    """

    inputs: dict[str, np.ndarray]
    labels: np.ndarray | None
    source: str

    @property
    def num_samples(self) -> int:
        return next((len(v) for v in self.inputs.values() if v.ndim), 1)

    def subset(self, n: int) -> "CalibData":
        labels = None if self.labels is None else self.labels[:n]
        return CalibData({k: v[:n] if v.ndim else v for k, v in self.inputs.items()}, labels, f"{self.source}[:{n}]")

    def batches(self, batch_size: int) -> list[dict[str, np.ndarray]]:
        return [{k: v[i:i + batch_size] if v.ndim else v for k, v in self.inputs.items()}
                for i in range(0, self.num_samples, batch_size)]


def input_specs(model: onnx.ModelProto) -> list[InputSpec]:
    """The model's real inputs (not initializers), with numpy dtypes and symbolic dims."""
    inits = {t.name for t in model.graph.initializer}
    specs = []
    for value in model.graph.input:
        if value.name in inits:
            continue
        tensor_type = value.type.tensor_type
        if not value.type.HasField("tensor_type"):
            raise CalibrationError(f"input {value.name!r}: only tensor inputs are supported")
        dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor_type.elem_type))
        dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tensor_type.shape.dim]
        specs.append(InputSpec(value.name, dtype, dims))
    return specs


def parse_input_shapes(items: list[str] | None) -> dict[str, list[int]]:
    """Parse repeated `NAME:1x3x224x224` options."""
    shapes = {}
    for item in items or []:
        match = re.fullmatch(r"(.+):(\d+(?:[x,]\d+)*)", item.strip())
        if not match:
            raise CalibrationError(f"--input-shape {item!r}: expected NAME:DIMS such as input:1x3x224x224")
        shapes[match.group(1)] = [int(d) for d in re.split(r"[x,]", match.group(2))]
    return shapes


def load_npz(path: str | Path, model: onnx.ModelProto, input_shapes: dict[str, list[int]] | None = None) -> CalibData:
    """Load and check calibration arrays against the model's inputs; never unpickles."""
    path = Path(path)
    if not path.is_file():
        raise CalibrationError(f"{path}: no such calibration file")
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as exc:
        raise CalibrationError(f"{path}: not a readable .npz of plain arrays ({exc})") from None
    labels = arrays.pop(LABELS, None)
    specs = {s.name: s for s in input_specs(model)}
    unknown = sorted(set(arrays) - set(specs))
    if unknown:
        raise CalibrationError(f"{path}: array {unknown[0]!r} is not a model input (inputs: {', '.join(specs)})")
    missing = [n for n in specs if n not in arrays]
    if missing:
        raise CalibrationError(f"{path}: no array for model input {missing[0]!r}")
    inputs = {name: _check_array(path, specs[name], arr, (input_shapes or {}).get(name)) for name, arr in arrays.items()}
    counts = {len(a) for a in inputs.values() if a.ndim} or {1}
    if len(counts) != 1:
        raise CalibrationError(f"{path}: inputs disagree on the number of samples (axis 0): {sorted(counts)}")
    if labels is not None:
        labels = np.asarray(labels).reshape(-1)
        if len(labels) != counts.pop() or not np.issubdtype(labels.dtype, np.integer):
            raise CalibrationError(f"{path}: 'labels' must be integers, one per sample")
    return CalibData(inputs, labels, str(path))


def _check_array(path: Path, spec: InputSpec, arr: np.ndarray, override: list[int] | None) -> np.ndarray:
    if arr.ndim != len(spec.shape):
        raise CalibrationError(f"{path}: array {spec.name!r} has shape {arr.shape}, the model expects "
                               f"{_fmt(spec.shape)} (axis 0 is the sample axis)")
    for axis, (want, got) in enumerate(zip(override or spec.shape, arr.shape)):
        if axis > 0 and isinstance(want, int) and want > 0 and want != got:
            raise CalibrationError(f"{path}: array {spec.name!r} has shape {arr.shape}, "
                                   f"the model expects {_fmt(spec.shape)}")
    if np.issubdtype(spec.dtype, np.floating) != np.issubdtype(arr.dtype, np.floating):
        raise CalibrationError(f"{path}: array {spec.name!r} is {arr.dtype}, the model input is {spec.dtype}")
    return np.asarray(arr, dtype=spec.dtype, order="C")  # ascontiguousarray would make a 0-d flag 1-d


def _fmt(shape: list) -> str:
    return "[" + ", ".join(str(d) if d else "?" for d in shape) + "]"


def synthetic(model: onnx.ModelProto, num_samples: int = 64, input_shapes: dict[str, list[int]] | None = None,
              seed: int = 0) -> CalibData:
    """Random float inputs from the model's input shapes; integer/bool inputs are zeros (with a warning)."""
    rng = np.random.default_rng(seed)
    input_shapes = input_shapes or {}
    inputs, zeroed = {}, []
    for spec in input_specs(model):
        shape = _concrete_shape(spec, input_shapes.get(spec.name), num_samples)
        if np.issubdtype(spec.dtype, np.floating) and shape:
            inputs[spec.name] = rng.standard_normal(shape).astype(spec.dtype)
        else:
            inputs[spec.name] = np.zeros(shape, spec.dtype)
            zeroed.append(spec.name)
    if not inputs:
        raise CalibrationError("the model has no inputs to feed")
    if zeroed:
        warnings.warn(f"inputs {', '.join(zeroed)} cannot be guessed and are filled with zeros; "
                      "supply real values with --calib FILE.npz", stacklevel=2)
    return CalibData(inputs, None, f"synthetic(n={num_samples}, seed={seed})")


def _concrete_shape(spec: InputSpec, override: list[int] | None, num_samples: int) -> list[int]:
    if override is not None:
        if len(override) != len(spec.shape):
            raise CalibrationError(f"--input-shape {spec.name}: {len(override)} dims given, the input has "
                                   f"{len(spec.shape)} {_fmt(spec.shape)}")
        shape = list(override)
    else:
        shape = [d if isinstance(d, int) and d > 0 else None for d in spec.shape]
        if not shape:
            return []  # a scalar input (a flag, a rate): one value for every batch
        if shape[0] is None:
            shape[0] = num_samples
        if None in shape[1:]:
            raise CalibrationError(f"input {spec.name!r} has dynamic dims {_fmt(spec.shape)}; "
                                   f"fix them with --input-shape {spec.name}:DIMS")
    shape[0] = num_samples  # axis 0 is the sample axis; the engine batches it
    return shape

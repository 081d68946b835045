"""Calibration inputs: from an .npz keyed by input name (optional `labels`), or synthetic from input shapes."""
from __future__ import annotations

import re
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

from evonnx.errors import CalibrationError
from evonnx.passes.engine import samples
from evonnx.passes.engine.samples import Axis

LABELS = "labels"
SYNTHETIC_SAMPLES = 256  # random samples when no calibration file is given
HOLDOUT = 0.25  # of the calibration samples, held out of every pass to check the budget on


@dataclass
class InputSpec:
    name: str
    dtype: np.dtype
    shape: list[int | str | None]  # ints are fixed, str/None are dynamic


@dataclass
class CalibData:
    """Named input arrays, optional labels (one per sample), and where they came from.

    `axes` gives each input's sample axis (samples.py); an input without one (a scalar rate, a flag, a
    fixed initial state) is passed whole to every batch. Left out, it is axis 0 for arrays, none for scalars.
    """

    inputs: dict[str, np.ndarray]
    labels: np.ndarray | None
    source: str
    axes: dict[str, Axis] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.axes = {k: self.axes.get(k, 0 if v.ndim else None) for k, v in self.inputs.items()}

    @property
    def num_samples(self) -> int:
        return next((samples.count(v, self.axes[k]) for k, v in self.inputs.items() if self.axes[k] is not None), 1)

    def feed(self, start: int, stop: int) -> dict[str, np.ndarray]:
        """Samples [start, stop) of every input (inputs without a sample axis whole)."""
        return {k: samples.take(v, self.axes[k], start, stop) for k, v in self.inputs.items()}

    def subset(self, n: int) -> "CalibData":
        labels = None if self.labels is None else self.labels[:n]
        return CalibData(self.feed(0, n), labels, f"{self.source}[:{n}]", self.axes)

    def batches(self, batch_size: int) -> list[dict[str, np.ndarray]]:
        return [self.feed(i, i + batch_size) for i in range(0, self.num_samples, batch_size)]

    def select(self, index: np.ndarray, source: str) -> "CalibData":
        """The samples at `index` (inputs without a sample axis whole)."""
        inputs = {k: v if self.axes[k] is None else np.take(v, index, axis=self.axes[k]) for k, v in self.inputs.items()}
        return CalibData(inputs, None if self.labels is None else self.labels[index], source, self.axes)

    def split(self, share: float, seed: int = 0, multiple: int = 1) -> tuple["CalibData", "CalibData | None"]:
        """(the samples passes may fit to, a held-out `share` no pass sees), the held-out ones stratified by
        label where labels exist, else drawn at random; both sizes are multiples of `multiple` (a model's
        fixed batch). No held-out part (None) when there are too few samples for two parts."""
        n = self.num_samples
        held = int(round(n * share / multiple)) * multiple
        held = max(held, multiple) if share > 0 else 0
        if held == 0 or n - held < multiple:
            return self, None
        rng = np.random.default_rng(seed)
        if self.labels is None:
            index = rng.permutation(n)[:held]
        else:  # every (n / held)-th sample of the label-sorted, shuffled order: each class in proportion
            order = np.lexsort((rng.random(n), self.labels))
            index = order[np.round(np.linspace(0, n - 1, held)).astype(int)]
        rest = np.setdiff1d(np.arange(n), index)
        rest = rest[:len(rest) - len(rest) % multiple]
        return (self.select(rest, f"{self.source} ({len(rest)} of {n} samples)"),
                self.select(np.sort(index), f"{self.source} (held out: {held} of {n} samples"
                            + (", stratified by label)" if self.labels is not None else ")")))

    def pair(self) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """Feeds of the first sample and of that sample twice, to measure where outputs carry samples."""
        one = self.feed(0, 1)
        return one, {k: samples.join([v, v], self.axes[k]) for k, v in one.items()}


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


def parse_batch_axes(items: list[str] | None) -> dict[str, Axis]:
    """Parse repeated `NAME:AXIS` options (`NAME:none`: the input has no sample axis, it is passed whole)."""
    axes: dict[str, Axis] = {}
    for item in items or []:
        match = re.fullmatch(r"(.+):(\d+|none)", item.strip())
        if not match:
            raise CalibrationError(f"--batch-axis {item!r}: expected NAME:AXIS such as state:1, or NAME:none")
        axes[match.group(1)] = None if match.group(2) == "none" else int(match.group(2))
    return axes


def input_axes(model: onnx.ModelProto, overrides: dict[str, Axis] | None = None) -> dict[str, Axis]:
    """Each model input's sample axis (samples.symbolic_axes), overrides checked against the inputs."""
    specs = {s.name: s for s in input_specs(model)}
    for name, axis in (overrides or {}).items():
        if name not in specs:
            raise CalibrationError(f"--batch-axis {name}: not a model input (inputs: {', '.join(specs)})")
        if axis is not None and not 0 <= axis < len(specs[name].shape):
            raise CalibrationError(f"--batch-axis {name}:{axis}: the input has {len(specs[name].shape)} dims "
                                   f"{_fmt(specs[name].shape)}")
    return samples.symbolic_axes({n: s.shape for n, s in specs.items()}, overrides)


def fixed_batch(model: onnx.ModelProto, axes: dict[str, Axis], label: str = "model") -> int | None:
    """The batch size the model's inputs fix on their sample axes (None when it is dynamic)."""
    fixed = set()
    for spec in input_specs(model):
        axis = axes.get(spec.name)
        if axis is not None and axis < len(spec.shape) and isinstance(spec.shape[axis], int) and spec.shape[axis] > 0:
            fixed.add(spec.shape[axis])
    if len(fixed) > 1:
        raise CalibrationError(f"{label}: inputs have different fixed batch sizes {sorted(fixed)}")
    return fixed.pop() if fixed else None


def load_npz(path: str | Path, model: onnx.ModelProto, input_shapes: dict[str, list[int]] | None = None,
             batch_axes: dict[str, Axis] | None = None) -> CalibData:
    """Load and check calibration arrays against the model's inputs; never unpickles."""
    path = Path(path)
    if not path.is_file():
        raise CalibrationError(f"{path}: no such calibration file")
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as exc:
        raise CalibrationError(f"{path}: not a readable .npz of plain arrays ({exc})") from None
    return from_arrays(arrays, model, input_shapes, batch_axes, str(path))


def from_python(source, model: onnx.ModelProto, input_shapes: dict[str, list[int]] | None = None,
                batch_axes: dict[str, Axis] | None = None) -> CalibData:
    """Calibration from Python: a dict of arrays keyed by input name (optional 'labels'), an iterable of such
    dicts (batches, joined along each input's sample axis), or a reader with `get_next()` returning one
    dict a call and None at the end (onnxruntime.quantization's CalibrationDataReader)."""
    if isinstance(source, dict):
        return from_arrays(dict(source), model, input_shapes, batch_axes, "arrays")
    if hasattr(source, "get_next"):
        source, what = iter(source.get_next, None), type(source).__name__
    else:
        what = type(source).__name__
    batches = [dict(b) for b in source]
    if not batches or not all(isinstance(b, dict) for b in batches):
        raise CalibrationError(f"calibration {what}: expected dicts of arrays keyed by input name, one a batch")
    names = list(batches[0])
    if any(list(b) != names for b in batches):
        raise CalibrationError(f"calibration {what}: every batch must hold the same arrays ({', '.join(names)})")
    axes = {**input_axes(model, batch_axes), LABELS: 0}
    arrays = {k: samples.join([np.asarray(b[k]) for b in batches], axes.get(k, 0)) for k in names}
    return from_arrays(arrays, model, input_shapes, batch_axes, f"{what} of {len(batches)} batches")


def from_arrays(arrays: dict[str, np.ndarray], model: onnx.ModelProto, input_shapes: dict[str, list[int]] | None,
                batch_axes: dict[str, Axis] | None, path: str) -> CalibData:
    """Check named arrays (and optional 'labels') against the model's inputs; `path` names their source."""
    labels = arrays.pop(LABELS, None)
    specs = {s.name: s for s in input_specs(model)}
    unknown = sorted(set(arrays) - set(specs))
    if unknown:
        raise CalibrationError(f"{path}: array {unknown[0]!r} is not a model input (inputs: {', '.join(specs)})")
    missing = [n for n in specs if n not in arrays]
    if missing:
        raise CalibrationError(f"{path}: no array for model input {missing[0]!r}")
    axes = input_axes(model, batch_axes)
    inputs = {name: _check_array(path, specs[name], arr, (input_shapes or {}).get(name), axes[name])
              for name, arr in arrays.items()}
    counts = {name: arr.shape[axes[name]] for name, arr in inputs.items() if axes[name] is not None}
    if len(set(counts.values())) > 1:
        listed = ", ".join(f"{n} {c} (axis {axes[n]})" for n, c in counts.items())
        raise CalibrationError(f"{path}: inputs disagree on the number of samples: {listed}; "
                               "name an input's sample axis with --batch-axis NAME:AXIS (NAME:none: no sample axis)")
    if labels is not None:
        labels = np.asarray(labels).reshape(-1)
        if len(labels) != next(iter(counts.values()), 1) or not np.issubdtype(labels.dtype, np.integer):
            raise CalibrationError(f"{path}: 'labels' must be integers, one per sample")
    return CalibData(inputs, labels, str(path), axes)


def _check_array(path: str, spec: InputSpec, arr: np.ndarray, override: list[int] | None, axis: Axis) -> np.ndarray:
    where = "no sample axis" if axis is None else f"axis {axis} is the sample axis"
    if arr.ndim != len(spec.shape):
        raise CalibrationError(f"{path}: array {spec.name!r} has shape {arr.shape}, the model expects "
                               f"{_fmt(spec.shape)} ({where})")
    for i, (want, got) in enumerate(zip(override or spec.shape, arr.shape)):
        if i != axis and isinstance(want, int) and want > 0 and want != got:
            raise CalibrationError(f"{path}: array {spec.name!r} has shape {arr.shape}, "
                                   f"the model expects {_fmt(spec.shape)} ({where})")
    if np.issubdtype(spec.dtype, np.floating) != np.issubdtype(arr.dtype, np.floating):
        raise CalibrationError(f"{path}: array {spec.name!r} is {arr.dtype}, the model input is {spec.dtype}")
    return np.asarray(arr, dtype=spec.dtype, order="C")  # ascontiguousarray would make a 0-d flag 1-d


def _fmt(shape: list) -> str:
    return "[" + ", ".join(str(d) if d else "?" for d in shape) + "]"


def synthetic(model: onnx.ModelProto, num_samples: int = SYNTHETIC_SAMPLES,
              input_shapes: dict[str, list[int]] | None = None,
              seed: int = 0, batch_axes: dict[str, Axis] | None = None) -> CalibData:
    """Random float inputs from the model's input shapes; integer/bool inputs are zeros (with a warning)."""
    rng = np.random.default_rng(seed)
    input_shapes = input_shapes or {}
    axes = input_axes(model, batch_axes)
    inputs, zeroed = {}, []
    for spec in input_specs(model):
        shape = _concrete_shape(spec, input_shapes.get(spec.name), num_samples, axes[spec.name])
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
    return CalibData(inputs, None, f"synthetic(n={num_samples}, seed={seed})", axes)


def _concrete_shape(spec: InputSpec, override: list[int] | None, num_samples: int, axis: Axis) -> list[int]:
    if override is not None:
        if len(override) != len(spec.shape):
            raise CalibrationError(f"--input-shape {spec.name}: {len(override)} dims given, the input has "
                                   f"{len(spec.shape)} {_fmt(spec.shape)}")
        shape = list(override)
    else:
        shape = [d if isinstance(d, int) and d > 0 else None for d in spec.shape]
        if axis is not None and shape[axis] is None:
            shape[axis] = num_samples
        if None in shape:
            raise CalibrationError(f"input {spec.name!r} has dynamic dims {_fmt(spec.shape)}; "
                                   f"fix them with --input-shape {spec.name}:DIMS")
    if axis is not None:
        shape[axis] = num_samples  # the engine batches the sample axis
    return shape

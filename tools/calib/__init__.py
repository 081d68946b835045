"""Calibration sets from real files: `evonnx calib text|images|audio` writes the .npz that `evonnx compress
--calib` reads (one array per model input, keyed by its name, and optional integer `labels`).

One module per kind of file; each imports its reader (tokenizers, Pillow, soundfile) only when it runs, so
the command line starts without them. Every problem with the user's files or model is a CalibrationError
naming the file or input, and nothing is written unless the whole set is built and checked.
"""
from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

from evonnx.errors import CalibrationError
from evonnx.formats.atomic import atomic_write_bytes
from evonnx.passes.engine import calib
from evonnx.passes.engine.calib import LABELS, InputSpec


@dataclass
class Built:
    """Arrays keyed by model input name, optional labels, and lines worth telling the user."""

    arrays: dict[str, np.ndarray]
    num_samples: int
    labels: np.ndarray | None = None
    notes: list[str] = field(default_factory=list)


def load_model(path: str | Path) -> onnx.ModelProto:
    """The model's graph without its weights (external data stays on disk)."""
    path = Path(path)
    if not path.is_file():
        raise CalibrationError(f"{path}: no such model file")
    try:
        return onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # noqa: BLE001 - protobuf and onnx raise several kinds
        raise CalibrationError(f"{path}: not a readable ONNX model ({exc.__class__.__name__})") from None


def model_inputs(model: onnx.ModelProto) -> dict[str, InputSpec]:
    return {s.name: s for s in calib.input_specs(model)}


def fixed(dim) -> int | None:
    """A dim's size when the model fixes it."""
    return dim if isinstance(dim, int) and dim > 0 else None


def describe(spec: InputSpec) -> str:
    return f"{spec.name!r} ({spec.dtype} [{', '.join(str(d) if fixed(d) else '?' for d in spec.shape)}])"


def pick_input(specs: dict[str, InputSpec], fits: Callable[[InputSpec], bool], kind: str,
               name: str | None) -> InputSpec:
    """The input named by --input, else the only one that `fits`."""
    if name is not None:
        if name not in specs:
            raise CalibrationError(f"--input {name}: not a model input (inputs: {', '.join(specs)})")
        return specs[name]
    found = [s for s in specs.values() if fits(s)]
    if len(found) == 1:
        return found[0]
    listed = ", ".join(describe(s) for s in specs.values())
    if not found:
        raise CalibrationError(f"the model has no input that takes {kind} (inputs: {listed})")
    raise CalibrationError(f"the model has several inputs that could take {kind} "
                           f"({', '.join(s.name for s in found)}): pick one with --input NAME")


def cannot_fill(spec: InputSpec, kind: str) -> CalibrationError:
    return CalibrationError(f"model input {describe(spec)}: `evonnx calib {kind}` has nothing to fill it with")


def choose(count: int, limit: int | None, seed: int) -> np.ndarray:
    """Indices of the samples to keep: all, or `limit` drawn with `seed` (kept in their order)."""
    if limit is not None and limit < 1:
        raise CalibrationError(f"--limit {limit}: must be at least 1")
    if limit is None or limit >= count:
        return np.arange(count)
    return np.sort(np.random.default_rng(seed).choice(count, limit, replace=False))


def list_files(directory: str | Path, extensions: set[str], kind: str, hint: str = "") -> list[Path]:
    """Files under `directory` (recursively, hidden ones aside) with one of `extensions`, sorted."""
    directory = Path(directory)
    if not directory.is_dir():
        raise CalibrationError(f"{directory}: no such directory")
    files = sorted(p for p in directory.rglob("*") if p.is_file() and p.suffix.lower() in extensions
                   and not any(part.startswith(".") for part in p.relative_to(directory).parts))
    if not files:
        raise CalibrationError(f"{directory}: no {kind} files in it{hint}")
    return files


def check_output(output: str | Path) -> None:
    """Fail before the work when the output cannot be written where asked."""
    output = Path(output)
    if output.is_dir():
        raise CalibrationError(f"{output}: is a directory, not an output file")
    if not output.parent.is_dir():
        raise CalibrationError(f"{output}: no such directory {output.parent}")


def save(built: Built, model: onnx.ModelProto, output: str | Path) -> None:
    """Check the arrays as `compress --calib` will, then write the .npz atomically."""
    arrays = dict(built.arrays)
    if built.labels is not None:
        arrays[LABELS] = built.labels
    calib.from_arrays(dict(arrays), model, None, None, str(output))
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    atomic_write_bytes(output, buffer.getvalue())


def summary(built: Built) -> str:
    parts = [f"{name} {a.dtype} [{', '.join(map(str, a.shape))}]" for name, a in built.arrays.items()]
    if built.labels is not None:
        parts.append(f"{LABELS} {built.labels.dtype} [{len(built.labels)}]")
    return f"{built.num_samples} samples: " + ", ".join(parts)

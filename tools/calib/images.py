"""`evonnx calib images`: image files (any format Pillow opens) resized so their shorter side covers the
target, then center-cropped to it, scaled (x / --scale), normalised ((x - mean) / std, in the model's channel
order), stacked in the model's layout. With labels from folders, each subfolder is a class (sorted names
numbered from 0)."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import onnx

from evonnx.errors import CalibrationError
from evonnx.tools.calib import (Built, InputSpec, cannot_fill, choose, describe, fixed, list_files, model_inputs,
                                pick_input)


HINT = " (.png, .jpg, .webp, ... any format Pillow opens)"


def is_image(spec: InputSpec) -> bool:
    return len(spec.shape) == 4 and (np.issubdtype(spec.dtype, np.floating) or spec.dtype == np.uint8)


def parse_size(text: str) -> tuple[int, int]:
    match = re.fullmatch(r"\s*(\d+)\s*(?:[xX,]\s*(\d+))?\s*", text)
    if not match or int(match.group(1)) == 0 or (match.group(2) is not None and int(match.group(2)) == 0):
        raise CalibrationError(f"--size {text}: expected a side such as 224, or HEIGHTxWIDTH such as 48x192")
    h = int(match.group(1))
    return h, int(match.group(2) or h)


def geometry(spec: InputSpec, layout: str | None, size: str | None, gray: bool | None) -> tuple[str, int, int, bool]:
    """(layout, height, width, gray) from the options, else from the model's fixed dims."""
    shape = spec.shape
    if layout is None:  # channels first unless only the last dim looks like channels
        layout = "nhwc" if fixed(shape[3]) in (1, 3) and fixed(shape[1]) not in (1, 3) else "nchw"
    c_axis, hw = (1, (2, 3)) if layout == "nchw" else (3, (1, 2))
    channels = fixed(shape[c_axis])
    if channels not in (None, 1, 3):
        raise CalibrationError(f"model input {describe(spec)}: {channels} channels in {layout.upper()}; "
                               "images are 3 (RGB) or 1 (--gray)")
    gray = channels == 1 if gray is None else gray
    model_hw = tuple(fixed(shape[a]) for a in hw)
    if size is None:
        if None in model_hw:
            raise CalibrationError(f"model input {describe(spec)}: height and width are not fixed; give --size")
        return layout, model_hw[0], model_hw[1], gray
    h, w = parse_size(size)
    for want, got, what in zip(model_hw, (h, w), ("height", "width")):
        if want is not None and want != got:
            raise CalibrationError(f"--size {size}: model input {spec.name!r} has a fixed {what} of {want}")
    return layout, h, w, gray


def load(path: Path, height: int, width: int, gray: bool) -> np.ndarray:
    """uint8 [H, W, C]: the shorter side resized to cover the target, then center-cropped."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            img = ImageOps.exif_transpose(img).convert("L" if gray else "RGB")
    except Exception as exc:  # noqa: BLE001 - Pillow raises many kinds for broken files
        why = "unknown format or not an image" if isinstance(exc, UnidentifiedImageError) else \
            f"{exc.__class__.__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''}"
        raise CalibrationError(f"{path}: not a readable image ({why})") from None
    w, h = img.size
    scale = max(width / w, height / h)
    nw, nh = max(width, round(w * scale)), max(height, round(h * scale))
    img = img.resize((nw, nh), Image.BILINEAR)
    left, top = (nw - width) // 2, (nh - height) // 2
    out = np.asarray(img.crop((left, top, left + width, top + height)))
    return out[..., None] if out.ndim == 2 else out


def extensions() -> set[str]:
    from PIL import Image

    return {ext for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN}


def files_and_labels(directory: str | Path, labels_from_dirs: bool) -> tuple[list[Path], np.ndarray | None, list[str]]:
    exts = extensions()
    if not labels_from_dirs:
        return list_files(directory, exts, "image", HINT), None, []
    directory = Path(directory)
    if not directory.is_dir():
        raise CalibrationError(f"{directory}: no such directory")
    classes = sorted(p.name for p in directory.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise CalibrationError(f"{directory}: no subfolders to take labels from (--labels-from-dirs)")
    files, labels = [], []
    for label, name in enumerate(classes):
        found = list_files(directory / name, exts, "image", HINT)
        files += found
        labels += [label] * len(found)
    return files, np.array(labels, np.int64), classes


def build(directory: str | Path, model: onnx.ModelProto, size: str | None = None, mean=None, std=None,
          scale: float = 255.0, layout: str | None = None, bgr: bool = False, gray: bool | None = None,
          labels_from_dirs: bool = False, limit: int | None = None, seed: int = 0,
          input_name: str | None = None) -> Built:
    specs = model_inputs(model)
    spec = pick_input(specs, is_image, "images ([batch, 3, H, W] or [batch, H, W, 3])", input_name)
    if not is_image(spec):
        raise CalibrationError(f"--input {spec.name}: {describe(spec)} is not an image input (4 dims)")
    others = [s for s in specs.values() if s.name != spec.name]
    if others:
        raise cannot_fill(others[0], "images")
    layout, height, width, gray = geometry(spec, layout, size, gray)
    channels = 1 if gray else 3
    mean = np.zeros(channels, np.float32) if mean is None else np.asarray(mean, np.float32)
    std = np.ones(channels, np.float32) if std is None else np.asarray(std, np.float32)
    for name, values in (("--mean", mean), ("--std", std)):
        if len(values) not in (1, channels):
            raise CalibrationError(f"{name}: {len(values)} values for {channels} channels")
    if np.any(std == 0) or scale == 0:
        raise CalibrationError("--std and --scale must not be 0")

    files, labels, classes = files_and_labels(directory, labels_from_dirs)
    keep = choose(len(files), limit, seed)
    pixels = np.stack([load(files[i], height, width, gray) for i in keep])  # uint8 [n, H, W, C]
    if bgr and not gray:
        pixels = pixels[..., ::-1]
    if np.issubdtype(spec.dtype, np.floating):
        x = (pixels.astype(np.float32) / np.float32(scale) - mean) / std
        order = "gray" if gray else "BGR" if bgr else "RGB"
        notes = [f"{len(keep)} images, {height}x{width} {order} {layout.upper()}, "
                 f"(x / {scale:g} - mean) / std"]
    else:
        x, notes = pixels, [f"{len(keep)} images, {height}x{width} {layout.upper()}, raw uint8 pixels"]
    if layout == "nchw":
        x = x.transpose(0, 3, 1, 2)
    if classes:
        notes.append("labels: " + ", ".join(f"{i}={name}" for i, name in enumerate(classes)))
    arrays = {spec.name: np.ascontiguousarray(x, dtype=spec.dtype)}
    return Built(arrays, len(keep), None if labels is None else labels[keep], notes)

"""Atomic checkpoints of a search: arrays and a JSON header in one .npz, replaced in one rename."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import onnx


def fingerprint(model: onnx.ModelProto, inputs: dict[str, np.ndarray], settings: dict, seed: int) -> str:
    """Identifies a run: the model, the calibration data, the settings and the seed."""
    h = hashlib.sha256(model.SerializeToString(deterministic=True))
    for name in sorted(inputs):
        h.update(name.encode())
        h.update(np.ascontiguousarray(inputs[name]).tobytes())
    h.update(json.dumps(settings, sort_keys=True, default=str).encode())
    h.update(str(seed).encode())
    return h.hexdigest()[:32]


def save(path: Path, header: dict, arrays: dict[str, np.ndarray]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        np.savez(fh, __header__=np.array(json.dumps(header)), **arrays)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def load(path: Path, fp: str) -> tuple[dict, dict[str, np.ndarray]] | None:
    """The checkpoint's header and arrays, or None when absent, unreadable or from another run."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            header = json.loads(str(z["__header__"]))
            arrays = {k: z[k] for k in z.files if k != "__header__"}
    except (OSError, ValueError, KeyError):
        return None
    return (header, arrays) if header.get("fingerprint") == fp else None

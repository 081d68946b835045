"""Atomic checkpoints of a search: a JSON header and named groups of arrays (each keyed by tensor name) in
one .npz replaced in one rename, large arrays content-addressed beside it."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import onnx

from evonnx.runtime.model_io import unheld, weight_free

BLOB_BYTES = 1 << 20
BLOB_KEY = "__blobs__"
GROUPS_KEY = "__groups__"
Groups = dict[str, dict[str, np.ndarray]]  # e.g. {"weights": {tensor name: array}, "masks": {...}}


def fingerprint(model: onnx.ModelProto, inputs: dict[str, np.ndarray], settings: dict, seed: int,
                weights: dict[str, np.ndarray] | None = None, held: dict[str, np.ndarray] | None = None) -> str:
    """Identifies a run: the model (with `weights` in place of its own, `held` the values of those held
    outside its graph), the calibration data, the settings and the seed (the model hashed as its weight-free
    copy and its large tensors, never serialized whole: any size)."""
    stub, held = weight_free(model, values=weights, held=held)
    unheld(stub, held)
    h = hashlib.sha256(stub.SerializeToString(deterministic=True))
    for name in sorted(held):
        h.update(name.encode())
        h.update(np.ascontiguousarray(held.pop(name)).data)
    for name in sorted(inputs):
        h.update(name.encode())
        h.update(np.ascontiguousarray(inputs[name]).tobytes())
    h.update(json.dumps(settings, sort_keys=True, default=str).encode())
    h.update(str(seed).encode())
    return h.hexdigest()[:32]


def _blobs(path: Path) -> Path:
    return path.with_name(path.name + ".blobs")


def _write(path: Path, write) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        write(fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def save(path: Path, header: dict, groups: Groups) -> None:
    """Replace the checkpoint at `path`. Arrays of BLOB_BYTES or more are stored once per content in
    `path.blobs/` (a step that changes one layer of a large model rewrites only that layer); the header
    names them, blobs are written before it and unreferenced ones removed after it."""
    names = {group: list(arrays) for group, arrays in groups.items()}
    arrays = {f"{group}.{i}": value for group, members in groups.items() for i, value in enumerate(members.values())}
    inline, refs = {}, {}
    for name, value in arrays.items():
        if value.nbytes < BLOB_BYTES:
            inline[name] = value
            continue
        value = np.ascontiguousarray(value)
        digest = hashlib.blake2b(f"{value.dtype.str}{value.shape}".encode() + value.data, digest_size=20).hexdigest()
        refs[name] = digest
        blob = _blobs(path) / f"{digest}.npy"
        if not blob.is_file():
            blob.parent.mkdir(exist_ok=True)
            _write(blob, lambda fh, v=value: np.save(fh, v, allow_pickle=False))
    meta = json.dumps({**header, BLOB_KEY: refs, GROUPS_KEY: names})
    _write(path, lambda fh: np.savez(fh, __header__=np.array(meta), **inline))
    if _blobs(path).is_dir():
        for f in _blobs(path).iterdir():
            if f.stem not in refs.values() or f.suffix != ".npy":
                f.unlink(missing_ok=True)


def load(path: Path, fp: str) -> tuple[dict, Groups] | None:
    """The checkpoint's header and groups of arrays, or None when absent, unreadable or from another run."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            header = json.loads(str(z["__header__"]))
            if header.get("fingerprint") != fp:
                return None
            arrays = {k: z[k] for k in z.files if k != "__header__"}
        for name, digest in header.pop(BLOB_KEY, {}).items():
            arrays[name] = np.load(_blobs(path) / f"{digest}.npy", allow_pickle=False)
        groups = {group: {name: arrays[f"{group}.{i}"] for i, name in enumerate(members)}
                  for group, members in header.pop(GROUPS_KEY).items()}
    except (OSError, ValueError, KeyError):
        return None
    return header, groups

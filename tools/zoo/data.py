"""Datasets for the reference zoo: FashionMNIST from the Debian package, sklearn digits as fallback.

Everything is local: FashionMNIST is read from ``dataset-fashion-mnist``
(``/usr/share/datasets/fashion-mnist``, or ``$EVONNX_FASHION_MNIST``); if it is absent the
8x8 digits bundled with scikit-learn are upsampled to 1x28x28 so the same models apply.
"""

from __future__ import annotations

import gzip
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = [
    "Dataset",
    "FASHION_MNIST_DIR",
    "read_idx",
    "fashion_mnist_root",
    "fashion_mnist_available",
    "load_fashion_mnist",
    "load_digits28",
    "load_dataset",
]

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
_DIGITS_TEST_FRACTION = 0.2

# IDX type codes -> big-endian numpy dtypes (http://yann.lecun.com/exdb/mnist/ file format).
_IDX_DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


@dataclass(frozen=True)
class Dataset:
    """Train/test split: images float32 (N,1,28,28) in [0,1], labels int64 (N,)."""

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int = 10


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Parse an IDX file (optionally gzip-compressed) into a native-endian numpy array."""
    path = Path(path)
    with open(path, "rb") as fh:
        raw = fh.read()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise ValueError(f"{path}: not an IDX file (bad magic {raw[:4]!r})")
    code, ndim = raw[2], raw[3]
    if code not in _IDX_DTYPES:
        raise ValueError(f"{path}: unknown IDX type code 0x{code:02x}")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{path}: truncated IDX header")
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    dtype = _IDX_DTYPES[code]
    count = int(np.prod(shape, dtype=np.int64))
    if len(raw) - header != count * dtype.itemsize:
        raise ValueError(
            f"{path}: payload has {len(raw) - header} bytes, header {shape} needs {count * dtype.itemsize}"
        )
    data = np.frombuffer(raw, dtype=dtype, count=count, offset=header).reshape(shape)
    return data.astype(dtype.newbyteorder("="))


def _find(root: Path, stem: str) -> Path | None:
    for suffix in (".gz", ""):
        p = root / f"{stem}{suffix}"
        if p.is_file():
            return p
    return None


_FASHION_STEMS = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}


def fashion_mnist_root(root: str | os.PathLike | None = None) -> Path:
    """``root``, else ``$EVONNX_FASHION_MNIST``, else the Debian package directory."""
    return Path(root or os.environ.get("EVONNX_FASHION_MNIST") or FASHION_MNIST_DIR)


def fashion_mnist_available(root: str | os.PathLike | None = None) -> bool:
    """True if all four FashionMNIST IDX files are present."""
    r = fashion_mnist_root(root)
    return all(_find(r, s) is not None for s in _FASHION_STEMS.values())


def load_fashion_mnist(root: str | os.PathLike | None = None) -> Dataset:
    """Load FashionMNIST (60k train / 10k test) from IDX files; raises FileNotFoundError if absent."""
    root = fashion_mnist_root(root)
    stems = _FASHION_STEMS
    paths = {k: _find(root, s) for k, s in stems.items()}
    missing = [stems[k] for k, p in paths.items() if p is None]
    if missing:
        raise FileNotFoundError(f"FashionMNIST files missing under {root}: {missing}")
    arrays = {k: read_idx(p) for k, p in paths.items()}
    out = {}
    for split in ("train", "test"):
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        if x.ndim != 3 or x.shape[1:] != (28, 28) or y.shape != (x.shape[0],):
            raise ValueError(f"unexpected FashionMNIST {split} shapes {x.shape}, {y.shape}")
        out[f"x_{split}"] = (x.astype(np.float32) / np.float32(255.0))[:, None, :, :]
        out[f"y_{split}"] = y.astype(np.int64)
    return Dataset(name="fashion-mnist", **out)


def load_digits28(seed: int = 0, test_fraction: float = _DIGITS_TEST_FRACTION) -> Dataset:
    """sklearn's 8x8 digits, nearest-upsampled 3x to 24x24 and zero-padded to 1x28x28; seeded split."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    imgs = bunch.images.astype(np.float32) / np.float32(16.0)  # (N, 8, 8), values 0..16
    imgs = np.repeat(np.repeat(imgs, 3, axis=1), 3, axis=2)
    imgs = np.pad(imgs, ((0, 0), (2, 2), (2, 2)))[:, None, :, :]
    labels = bunch.target.astype(np.int64)
    perm = np.random.default_rng(seed).permutation(len(labels))
    n_test = int(round(test_fraction * len(labels)))
    te, tr = perm[:n_test], perm[n_test:]
    return Dataset(
        name="sklearn-digits28",
        x_train=np.ascontiguousarray(imgs[tr]),
        y_train=labels[tr],
        x_test=np.ascontiguousarray(imgs[te]),
        y_test=labels[te],
    )


def load_dataset(root: str | os.PathLike | None = None, seed: int = 0) -> Dataset:
    """FashionMNIST if installed, else the digits fallback (with a RuntimeWarning)."""
    try:
        return load_fashion_mnist(root)
    except FileNotFoundError as exc:
        warnings.warn(
            f"{exc}; falling back to scikit-learn 8x8 digits upsampled to 28x28 "
            "(install the Debian package dataset-fashion-mnist for the real zoo)",
            RuntimeWarning,
            stacklevel=2,
        )
        return load_digits28(seed=seed)

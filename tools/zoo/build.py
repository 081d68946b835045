"""Build (train, export, verify, cache) the reference zoo models.

Each entry directory holds ``model.onnx`` (opset 17, IR <= 10, input ``input`` with a dynamic
batch dim, output ``logits``), ``calib.npz`` (keys ``input`` [+ ``labels``]), ``test.npz``
(keys ``input``, ``labels``; trained models only) and ``meta.json``.  Entries are cached: a
directory whose files exist and whose meta matches (name, seed, zoo version, input shape,
dataset) is returned without retraining.  torch is imported only when something is built.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import onnx

from evonnx.formats.atomic import atomic_write_bytes
from evonnx.tools.corpus.fetch import sha256_file
from . import data as zdata

__all__ = [
    "ZOO_VERSION",
    "OPSET",
    "MAX_IR_VERSION",
    "INPUT_NAME",
    "OUTPUT_NAME",
    "Recipe",
    "RECIPES",
    "ZooEntry",
    "available",
    "default_dir",
    "load",
    "build",
    "export_onnx",
    "verify_onnx",
    "ort_session",
    "ort_predict",
    "train_model",
]

log = logging.getLogger(__name__)

ZOO_VERSION = 1
OPSET = 17
MAX_IR_VERSION = 10
INPUT_NAME = "input"
OUTPUT_NAME = "logits"
N_CALIB = 1000
N_CALIB_RANDOM = 32
TORCH_THREADS = 2
VERIFY_ATOL = 1e-4

MODEL_FILE, CALIB_FILE, TEST_FILE, META_FILE = "model.onnx", "calib.npz", "test.npz", "meta.json"
TRAIN_FILE = "train-minus-calib.npz"  # the train split less the calibration set; written on first use


@dataclass(frozen=True)
class Recipe:
    """Training hyper-parameters (Adam + per-step cosine decay, cross-entropy)."""

    epochs: int
    batch_size: int
    lr: float


RECIPES: dict[str, Recipe] = {
    "lenet300": Recipe(epochs=12, batch_size=128, lr=2e-3),
    "lenet5": Recipe(epochs=6, batch_size=256, lr=2e-3),
}
_UNTRAINED = ("resnet50ish",)


@dataclass
class ZooEntry:
    """A built zoo model: file paths plus its ``meta.json`` contents."""

    name: str
    model_path: Path
    calib_path: Path
    test_path: Path | None
    meta: dict[str, Any] = field(default_factory=dict)

    def load_calib(self) -> dict[str, np.ndarray]:
        """Calibration arrays (``input`` and, for trained models, ``labels``)."""
        with np.load(self.calib_path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}

    def load_test(self) -> dict[str, np.ndarray] | None:
        """Held-out test arrays (``input``, ``labels``), or None for untrained models."""
        if self.test_path is None:
            return None
        with np.load(self.test_path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}

    @property
    def train_path(self) -> Path | None:
        """The train split less the calibration set (``input``, ``labels``) of a trained model, see
        :func:`train_split`."""
        return self.model_path.parent / TRAIN_FILE if self.meta.get("trained") else None


def available() -> list[str]:
    """Names accepted by :func:`build`."""
    return [*RECIPES, *_UNTRAINED]


def _check_name(name: str) -> None:
    if name not in available():
        raise ValueError(f"unknown zoo model {name!r}; available: {available()}")


def default_dir(name: str, image_size: int | None = None) -> Path:
    """``$EVONNX_ZOO/<name>`` or ``~/.cache/evonnx/zoo/<name>`` (resnet50ish at a non-224 size: ``<name>_<size>``)."""
    _check_name(name)
    root = os.environ.get("EVONNX_ZOO")
    base = Path(root).expanduser() if root else Path.home() / ".cache" / "evonnx" / "zoo"
    sub = name if image_size in (None, 224) else f"{name}_{int(image_size)}"
    return base / sub


def _input_shape(name: str, image_size: int | None) -> list[int]:
    if name in _UNTRAINED:
        s = 224 if image_size is None else int(image_size)
        return [3, s, s]
    if image_size is not None:
        raise ValueError(f"image_size only applies to {_UNTRAINED}, not {name!r}")
    return [1, 28, 28]


def _expected_dataset(name: str) -> str | None:
    if name in _UNTRAINED:
        return None
    return "fashion-mnist" if zdata.fashion_mnist_available() else "sklearn-digits28"


def _entry(name: str, out: Path, meta: dict[str, Any]) -> ZooEntry:
    test = out / TEST_FILE if meta.get("test_accuracy") is not None else None
    return ZooEntry(name, out / MODEL_FILE, out / CALIB_FILE, test, meta)


def _read_cached(name: str, out: Path, seed: int, image_size: int | None) -> ZooEntry | None:
    try:
        meta = json.loads((out / META_FILE).read_text())
    except (OSError, ValueError):
        return None
    want = {
        "name": name,
        "seed": seed,
        "zoo_version": ZOO_VERSION,
        "input_shape": _input_shape(name, image_size),
        "dataset": _expected_dataset(name),
    }
    if any(meta.get(k) != v for k, v in want.items()):
        return None
    entry = _entry(name, out, meta)
    files = [entry.model_path, entry.calib_path] + ([entry.test_path] if entry.test_path else [])
    return entry if all(p.is_file() for p in files) else None


def load(
    name: str, out_dir: str | os.PathLike | None = None, *, seed: int = 0, image_size: int | None = None
) -> ZooEntry | None:
    """Return the cached entry if it is complete and current, else None (never builds, no torch)."""
    _check_name(name)
    out = Path(out_dir) if out_dir is not None else default_dir(name, image_size)
    return _read_cached(name, out, seed, image_size)


# ----------------------------------------------------------------------------- file helpers


def _atomic_write(path: Path, writer: Callable[[io.BytesIO], None]) -> None:
    """Let `writer` fill a buffer, then write it atomically (nothing is written if `writer` fails)."""
    buffer = io.BytesIO()
    writer(buffer)
    atomic_write_bytes(path, buffer.getvalue())


def _save_npz(path: Path, **arrays: np.ndarray) -> None:
    _atomic_write(path, lambda fh: np.savez(fh, **arrays))


@contextlib.contextmanager
def _dir_lock(out: Path):
    """Exclusive advisory lock on ``out/.lock`` so concurrent builders do not train twice."""
    try:
        import fcntl
    except ImportError:  # non-POSIX: atomic writes still keep files consistent
        yield
        return
    with open(out / ".lock", "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


# ----------------------------------------------------------------------------- torch / onnx


@contextlib.contextmanager
def _torch_mode(seed: int, threads: int = TORCH_THREADS):
    """Seeded, deterministic, ``threads``-thread torch; previous settings restored on exit."""
    import torch

    prev_threads, prev_det = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)
    torch.manual_seed(seed)
    try:
        yield torch
    finally:
        torch.set_num_threads(prev_threads)
        torch.use_deterministic_algorithms(prev_det)


def export_onnx(
    model, input_shape, *, opset: int = OPSET, max_ir_version: int = MAX_IR_VERSION
) -> onnx.ModelProto:
    """Export a torch module (eval mode) to a checked ONNX model with a dynamic batch dim.

    Uses the legacy TorchScript exporter (fast, no onnxscript); falls back to the dynamo
    exporter if the legacy one is unavailable.
    """
    import torch

    model.eval()
    dummy = torch.zeros((2, *input_shape), dtype=torch.float32)
    kwargs = dict(opset_version=opset, input_names=[INPUT_NAME], output_names=[OUTPUT_NAME])
    try:
        buf = io.BytesIO()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                model,
                (dummy,),
                buf,
                dynamo=False,
                do_constant_folding=True,
                dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
                **kwargs,
            )
        proto = onnx.load_from_string(buf.getvalue())
    except Exception as legacy_exc:  # legacy exporter removed or failing: try dynamo
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                prog = torch.onnx.export(
                    model,
                    (dummy,),
                    dynamo=True,
                    dynamic_shapes=({0: torch.export.Dim("batch")},),
                    verbose=False,
                    **kwargs,
                )
            proto = prog.model_proto
        except Exception as exc:
            raise RuntimeError(f"ONNX export failed (legacy: {legacy_exc}); dynamo: {exc}") from exc
    proto.ir_version = min(proto.ir_version, max_ir_version)
    proto.producer_name = "evonnx.tools.zoo"
    onnx.checker.check_model(proto, full_check=True)
    got_opset = {o.domain: o.version for o in proto.opset_import}.get("", None)
    if got_opset != opset:
        raise RuntimeError(f"exported opset {got_opset}, wanted {opset}")
    return proto


def ort_session(model: onnx.ModelProto | str | os.PathLike, threads: int = TORCH_THREADS):
    """CPU-only ONNX Runtime session for a ModelProto or a path."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    src = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    return ort.InferenceSession(src, sess_options=so, providers=["CPUExecutionProvider"])


def ort_predict(session, x: np.ndarray, batch_size: int = 2048) -> np.ndarray:
    """Logits for ``x`` (float32, N first) computed in batches."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    outs = [session.run([OUTPUT_NAME], {INPUT_NAME: x[i : i + batch_size]})[0] for i in range(0, len(x), batch_size)]
    return np.concatenate(outs, axis=0)


def verify_onnx(proto_or_session, model, x: np.ndarray, atol: float = VERIFY_ATOL) -> float:
    """Max |ORT - torch| over ``x``; raises RuntimeError if above ``atol`` (relative to max(1, |logits|))."""
    import torch

    sess = proto_or_session if hasattr(proto_or_session, "run") else ort_session(proto_or_session)
    model.eval()
    with torch.no_grad():
        ref = model(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))).numpy()
    got = ort_predict(sess, x)
    if got.shape != ref.shape:
        raise RuntimeError(f"ORT output shape {got.shape} != torch {ref.shape}")
    err = float(np.max(np.abs(got - ref))) if ref.size else 0.0
    scale = max(1.0, float(np.max(np.abs(ref))) if ref.size else 1.0)
    if not err <= atol * scale:
        raise RuntimeError(f"ORT vs torch max abs diff {err:.3g} > {atol:g} * {scale:.3g}")
    return err


def train_model(model, x: np.ndarray, y: np.ndarray, recipe: Recipe, seed: int = 0) -> float:
    """Train in place with Adam + cosine decay, seeded shuffles; returns wall seconds."""
    with _torch_mode(seed) as torch:
        xt, yt = torch.from_numpy(x), torch.from_numpy(y)
        n = len(xt)
        steps_per_epoch = -(-n // recipe.batch_size)
        opt = torch.optim.Adam(model.parameters(), lr=recipe.lr)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=recipe.epochs * steps_per_epoch)
        gen = torch.Generator().manual_seed(seed)
        t0 = time.perf_counter()
        for epoch in range(recipe.epochs):
            model.train()
            perm = torch.randperm(n, generator=gen)
            total = torch.zeros(())
            for i in range(0, n, recipe.batch_size):
                idx = perm[i : i + recipe.batch_size]
                opt.zero_grad(set_to_none=True)
                loss = torch.nn.functional.cross_entropy(model(xt[idx]), yt[idx])
                loss.backward()
                opt.step()
                sched.step()
                total += loss.detach() * len(idx)
            seconds = time.perf_counter() - t0
            log.info(f"  epoch {epoch + 1}/{recipe.epochs}: loss {total.item() / n:.4f} ({seconds:.1f}s)")
        model.eval()
        return time.perf_counter() - t0


def _calibrate_bn(model, input_shape, seed: int, batches: int = 2, batch_size: int = 8) -> None:
    """Set BatchNorm running stats from random-normal inputs so a random net has sane activations."""
    import torch

    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average
    gen = torch.Generator().manual_seed(seed + 1)
    model.train()
    with torch.no_grad():
        for _ in range(batches):
            model(torch.randn((batch_size, *input_shape), generator=gen))
    model.eval()


# ----------------------------------------------------------------------------- build


def build(
    name: str,
    out_dir: str | os.PathLike | None = None,
    force: bool = False,
    *,
    seed: int = 0,
    image_size: int | None = None,
) -> ZooEntry:
    """Build (or return the cached) zoo entry ``name`` in ``out_dir`` (default :func:`default_dir`).

    Trained models (lenet300, lenet5) are trained on the dataset's train split, exported,
    verified against torch with ONNX Runtime and scored on the full test split with the ONNX
    model.  ``resnet50ish`` is random-init (BN stats calibrated on random inputs), ``image_size``
    sets its spatial size (default 224); its calib set is 32 random-normal inputs, no test set.
    """
    _check_name(name)
    input_shape = _input_shape(name, image_size)
    out = Path(out_dir) if out_dir is not None else default_dir(name, image_size)
    out.mkdir(parents=True, exist_ok=True)
    if not force and (hit := _read_cached(name, out, seed, image_size)) is not None:
        log.info(f"zoo: {name} cached in {out}")
        return hit
    with _dir_lock(out):
        if not force and (hit := _read_cached(name, out, seed, image_size)) is not None:
            log.info(f"zoo: {name} built concurrently in {out}")
            return hit
        return _build_locked(name, out, seed, input_shape)


def labelled_calibration(entry: ZooEntry, samples: int, path: Path) -> Path:
    """Write a calibration .npz of `samples` labelled train images at `path`: the entry's own calibration set
    first, then the rest of the train split (a budget checked on a held-out share needs more samples than
    the search does). The test set stays unseen."""
    own = entry.load_calib()
    with np.load(train_split(entry), allow_pickle=False) as z:
        more = max(samples - len(own["labels"]), 0)
        x = np.concatenate([own["input"], z["input"][:more]])[:samples]
        y = np.concatenate([own["labels"], z["labels"][:more]])[:samples]
    np.savez(path, input=x, labels=y)
    return path


def train_split(entry: ZooEntry, seed: int = 0) -> Path:
    """Write (once) and return the train split the model was trained on, less the calibration samples (a
    1,000-sample subset of it): the data a user would distil or retrain with. The calibration set then stays
    unseen by the student, so fine-tuning's validation and the bit allocation's budget, both measured on it,
    are not flattered by samples the student was fitted to. The test set stays held out. Deterministic, so it
    is made on demand rather than with every build."""
    path = entry.train_path
    if path is None:
        raise ValueError(f"{entry.name} is untrained: it has no train split")
    if not path.is_file():
        with _dir_lock(path.parent):
            if not path.is_file():
                ds = zdata.load_dataset(seed=seed)
                keep = ~rows_in(ds.x_train, entry.load_calib()["input"])
                _atomic_write(path, lambda fh: np.savez_compressed(fh, input=ds.x_train[keep],
                                                                   labels=ds.y_train[keep]))
    return path


def rows_in(x: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Which samples of `x` equal some sample of `rows` (exact, vectorised: an integer hash of each sample's
    bytes finds the candidates, byte equality confirms them). Every row of `rows` must occur in `x`."""
    a, b = (np.ascontiguousarray(v.reshape(len(v), -1)).view(np.uint8) for v in (x, rows))
    if a.shape[1] % 4 == 0:
        a, b = a.view(np.uint32), b.view(np.uint32)
    mult = np.random.default_rng(0).integers(1, 2**63, a.shape[1], dtype=np.uint64) | np.uint64(1)
    ka, kb = a.astype(np.uint64) @ mult, b.astype(np.uint64) @ mult
    order = np.argsort(kb, kind="stable")
    pos = np.clip(np.searchsorted(kb[order], ka), 0, len(kb) - 1)
    match = order[pos]
    hit = (kb[match] == ka) & np.all(a == b[match], axis=1)
    if len(np.unique(match[hit])) != len(b):
        raise ValueError("the calibration samples are not all in the train split")
    return hit


def _build_locked(name: str, out: Path, seed: int, input_shape: list[int]) -> ZooEntry:
    import onnxruntime as ort
    import torch

    from .models import MODELS, count_params

    with contextlib.suppress(FileNotFoundError):
        (out / META_FILE).unlink()  # invalidate first: a crash mid-build leaves no matching meta
    rng = np.random.default_rng(seed)
    recipe = RECIPES.get(name)
    meta: dict[str, Any] = {"name": name, "zoo_version": ZOO_VERSION, "seed": seed}

    with _torch_mode(seed):
        model = MODELS[name](image_size=input_shape[1]) if name in _UNTRAINED else MODELS[name]()
    if recipe is not None:
        ds = zdata.load_dataset(seed=seed)
        log.info(f"zoo: training {name} on {ds.name} ({len(ds.y_train)} train, {recipe})")
        train_seconds = train_model(model, ds.x_train, ds.y_train, recipe, seed=seed)
        idx = np.sort(rng.choice(len(ds.y_train), size=min(N_CALIB, len(ds.y_train)), replace=False))
        calib = {"input": ds.x_train[idx], "labels": ds.y_train[idx]}
        test = {"input": ds.x_test, "labels": ds.y_test}
        dataset_name = ds.name
    else:
        log.info(f"zoo: {name} random init (seed {seed}), input {input_shape}")
        with _torch_mode(seed):
            _calibrate_bn(model, input_shape, seed)
        train_seconds = 0.0
        calib = {"input": rng.standard_normal((N_CALIB_RANDOM, *input_shape), dtype=np.float32)}
        test = None
        dataset_name = None

    t0 = time.perf_counter()
    with _torch_mode(seed):
        proto = export_onnx(model, input_shape)
        sess = ort_session(proto)
        max_diff = verify_onnx(sess, model, (test or calib)["input"][:64])
    log.info(f"zoo: exported {name} (max |ORT-torch| {max_diff:.2e}, {time.perf_counter() - t0:.1f}s)")

    test_accuracy = None
    if test is not None:
        pred = ort_predict(sess, test["input"]).argmax(axis=1)
        test_accuracy = float(np.mean(pred == test["labels"]))
        log.info(f"zoo: {name} ONNX test accuracy {test_accuracy:.4f}")

    model_path = out / MODEL_FILE
    _atomic_write(model_path, lambda fh: fh.write(proto.SerializeToString()))
    _save_npz(out / CALIB_FILE, **calib)
    if test is not None:
        _save_npz(out / TEST_FILE, **test)
    else:
        with contextlib.suppress(FileNotFoundError):
            (out / TEST_FILE).unlink()

    files = [MODEL_FILE, CALIB_FILE] + ([TEST_FILE] if test is not None else [])
    meta.update(
        dataset=dataset_name,
        params=count_params(model),
        train_seconds=round(train_seconds, 3),
        test_accuracy=test_accuracy,
        trained=recipe is not None,
        recipe=asdict(recipe) if recipe is not None else None,
        input_name=INPUT_NAME,
        output_name=OUTPUT_NAME,
        input_shape=input_shape,
        num_classes=int(proto.graph.output[0].type.tensor_type.shape.dim[1].dim_value),
        opset=OPSET,
        ir_version=int(proto.ir_version),
        n_calib=int(len(calib["input"])),
        n_test=int(len(test["input"])) if test is not None else 0,
        export_max_abs_diff=max_diff,
        model_sha256=sha256_file(model_path),
        file_bytes={f: (out / f).stat().st_size for f in files},
        versions={
            "torch": torch.__version__,
            "onnx": onnx.__version__,
            "onnxruntime": ort.__version__,
            "numpy": np.__version__,
        },
        created=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    )
    _atomic_write(out / META_FILE, lambda fh: fh.write(json.dumps(meta, indent=2).encode()))
    log.info(f"zoo: wrote {name} to {out}")
    return _entry(name, out, meta)

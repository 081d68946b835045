"""evonnx against its peers on the zoo models, side by side in one run.

    python -m evonnx.tools.bench.peers [--models lenet300 lenet5] [--time-limit 120] [--device auto] [--out FILE.md]

Rows: zstd of the fp32 ONNX file; ORT dynamic int8; ORT 4-bit MatMulNBits; Deep Compression built from our
passes, one-shot and with retraining (iterative magnitude pruning, k-means, centroid fine-tune, our entropy
coding); evonnx default; evonnx with --max-drop 0.5 and 1.0 at higher sparsity; evonnx with gradient recovery
at 97 %, within an accuracy budget and within --max-bytes 100x. Training runs on CUDA where torch sees a GPU.
Searches use the zoo's calibration set, training on its train split less the calibration samples
(`train-minus-calib.npz`); accuracy is on the held-out test set; the ratio is against the fp32 ONNX file.
"""
from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import zstandard

from evonnx.errors import BudgetError
from evonnx.passes.pipeline import Pipeline
from evonnx.tools.bench import emit, paired_se
from evonnx.runtime import decode
from evonnx.tools.bench.quantization import ort_rows
from evonnx.passes.compress import compress
from evonnx.tools.zoo import build
from evonnx.tools.zoo.build import ort_predict, ort_session, train_split

DEEP_COMPRESSION = [("magnitude", {"sparsity": 0.9, "refit": False}), ("quantize", {"scheme": "codebook", "bits": 5})]
FINETUNE = {"steps": 1500, "lr": 1e-3, "label_weight": 0.5, "augment": []}  # on the zoo's train split
# recovery's distillation on this 2-core machine: lenet5 6,000 steps of 128 (13 epochs); lenet300 the `recovery`
# bench's best CPU recipe, 20,000 steps of 512 (175 epochs) with the mask regrown and validation on held-out train
# rows. --long: what the `recovery` bench found on a GPU: 20,000 steps of 512 bring lenet5's 97 % student to the teacher
RECOVERY = {"lenet300": {"steps": 20000, "batch_size": 512, "lr": 2e-3, "regrow": 0.3, "holdout": 0.02,
                         "label_weight": 1.0}, "lenet5": {"steps": 6000}}
LONG_RECOVERY = {"steps": 20000, "batch_size": 512, "lr": 2e-3}


def deep_compression_retrained(train: str) -> Pipeline:
    """Deep Compression as published: iterative pruning with retraining, k-means weight sharing, centroid
    fine-tuning (here with the teacher's soft outputs plus labels on the train split), then our coding."""
    ft = {**FINETUNE, "data": train}
    return Pipeline([("iterative-magnitude", {"sparsity": 0.9, "rounds": 3, "finetune": {**ft, "steps": 500}}),
                     ("quantize", {"scheme": "codebook", "bits": 5}), ("distill-finetune", ft)])


def recovery(train: str, sparsity: float, ft: dict) -> Pipeline:
    """evonnx with gradient recovery: DE, distillation on the train split, dead units cleared, bit allocation,
    fine-tune on the grid."""
    ft = {**FINETUNE, "data": train, **ft}
    grid = {**ft, "lr": 3e-4, "steps": ft["steps"] // 4, "regrow": 0.0}
    return Pipeline([("directed-evolution", {"sparsity": sparsity}), ("distill-finetune", ft), ("dead-units", {}),
                     ("bit-allocation", {"max_drop": 0.5}), ("distill-finetune", grid)])


def recipe(ft: dict) -> str:
    """The distillation settings a row's label names."""
    out = f"{ft['steps']} steps" + (f" of {ft['batch_size']}" if "batch_size" in ft else "")
    return out + (f", regrow {ft['regrow']:g}" if ft.get("regrow") else "") + \
        (f", label weight {ft['label_weight']:g}" if "label_weight" in ft else "")


def evonnx_rows(model_path: Path, calib: Path, train: str, x: np.ndarray, y: np.ndarray,
                time_limit: float, ft: dict, device: str) -> list[dict]:
    steps = recipe(ft)
    configs = [
        ("Deep-Compression recipe, no retraining (magnitude 90 % + k-means 5 bit + our coding)",
         {"pipeline": Pipeline(DEEP_COMPRESSION)}),
        ("Deep Compression with retraining (IMP 90 %, 3 rounds + k-means 5 bit + centroid fine-tune + our coding)",
         {"pipeline": deep_compression_retrained(train)}),
        ("evonnx default (budget-driven, --max-drop 0.5 checked on a held-out quarter)", {}),
        ("evonnx --sparsity 0.95 --max-drop 0.5", {"sparsity": 0.95, "max_drop": 0.5}),
        ("evonnx --sparsity 0.95 --max-drop 1.0", {"sparsity": 0.95, "max_drop": 1.0}),
        (f"evonnx + recovery (DE 97 %, distill-finetune {steps} on the train split, bits --max-drop 0.5, "
         "grid fine-tune)", {"pipeline": recovery(train, 0.97, ft)}),
        ("evonnx + recovery at 97 %, --max-bytes 100x", {"pipeline": recovery(train, 0.97, ft), "max_bytes": "100x"}),
    ]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for label, kwargs in configs:
            out = Path(tmp) / "m.evx"
            start = time.perf_counter()
            try:
                compress(model_path, out, calib=calib, time_limit=time_limit, device=device, progress=False, **kwargs)
            except BudgetError:  # nothing within --max-drop on the held-out share: the row says so
                rows.append({"method": label + " (exit 3: beyond budget)", "file": None})
                continue
            seconds = time.perf_counter() - start
            pred = ort_predict(ort_session(decode(out)), x).argmax(1)
            rows.append({"method": label, "file": out.stat().st_size, "acc": float(np.mean(pred == y)), "pred": pred,
                         "seconds": seconds})
    return rows


def bench(name: str, time_limit: float, device: str = "auto", long: bool = False) -> list[dict]:
    entry = build(name)
    test = entry.load_test()
    x, y = test["input"], test["labels"]
    from evonnx.passes.engine.calib import CalibData
    start = time.perf_counter()
    data = Path(entry.model_path).read_bytes()
    zstd_size = len(zstandard.ZstdCompressor(level=19).compress(data))
    rows = [{"method": "zstd -19 of the fp32 ONNX file", "file": zstd_size, "acc": entry.meta["test_accuracy"],
             "seconds": time.perf_counter() - start}]
    ort = ort_rows(Path(entry.model_path), CalibData({"input": x}, y, "test"))
    reference = next(r["pred"] for r in ort if r["method"] == "fp32 (ORT)")
    rows += [r for r in ort if r["method"] != "fp32 (ORT)"]
    rows += evonnx_rows(Path(entry.model_path), Path(entry.calib_path), str(train_split(entry)), x, y, time_limit,
                        LONG_RECOVERY if long else RECOVERY.get(name, {"steps": FINETUNE["steps"]}), device)
    fp32 = os.path.getsize(entry.model_path)
    for row in rows:
        row.update(model=name, fp32=fp32, dense=entry.meta["test_accuracy"])
        if "pred" in row:
            row["se"] = paired_se(reference, row.pop("pred"), y)
    return rows


def render(rows: list[dict]) -> str:
    lines = [f"machine: {platform.machine()}, {os.cpu_count()} cores", "",
             "| model | method | bytes | ratio | test acc | drop (pts) | ± s.e. | wall s |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        if r.get("file") is None:
            lines.append(f"| {r['model']} | {r['method']} | n/a | – | – | – | – | – |")
            continue
        drop = 100 * (r["dense"] - r["acc"])
        seconds = f"{r['seconds']:.1f}" if "seconds" in r else "–"
        se = f"{r['se']:.2f}" if "se" in r else "0"
        lines.append(f"| {r['model']} | {r['method']} | {r['file']:,} | {r['fp32'] / r['file']:.1f}× | "
                     f"{r['acc']:.4f} | {drop:.2f} | {se} | {seconds} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["lenet300", "lenet5"])
    parser.add_argument("--time-limit", type=float, default=120.0, help="seconds for each evonnx search")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="ONNX Runtime searches and torch training (auto: CUDA where it works)")
    parser.add_argument("--long", action="store_true", help="recovery rows distil 20,000 steps of 512 (a GPU's work)")
    parser.add_argument("--out", help="also write the table to this markdown file")
    args = parser.parse_args(argv)
    text = render([row for name in args.models for row in bench(name, args.time_limit, args.device, args.long)])
    return emit(text, args.out)


if __name__ == "__main__":
    from evonnx.tools.interrupt import entry_point
    raise SystemExit(entry_point(main))

"""`evonnx demo`: build the lenet300 zoo model if missing, compress it within a budget, decode it, and test it
on the test set, which no pass sees."""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np


def add_parser(sub) -> argparse.ArgumentParser:
    parser = sub.add_parser("demo", help="compress the lenet300 zoo model end to end (builds it if missing)")
    parser.add_argument("--model", default="lenet300", help="zoo model to use")
    parser.add_argument("--out", default="demo_out", help="folder for the container and decoded model")
    parser.add_argument("--max-drop", type=float, default=0.5, help="accuracy points (default %(default)s)")
    parser.add_argument("--calib-samples", type=int, default=3000,
                        help="labelled train images to calibrate on, half held out for the budget check "
                             "(default %(default)s)")
    parser.add_argument("--time-limit", type=float, default=60.0, help="seconds (default %(default)s)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    return parser


def run(args: argparse.Namespace) -> int:
    from evonnx.passes.engine.fitness import Runner
    from evonnx.passes.engine.providers import resolve
    from evonnx.runtime import decode
    from evonnx.runtime.model_io import save_model
    from evonnx.tools.cmd_compress import format_summary
    from evonnx.passes.compress import compress
    from evonnx.tools.zoo import build
    from evonnx.tools.zoo.build import labelled_calibration

    entry = build(args.model)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    container = out / f"{args.model}.evx"
    calib = labelled_calibration(entry, args.calib_samples, out / "calib.npz")
    result = compress(entry.model_path, container, calib=calib, max_drop=args.max_drop, holdout=0.5,
                      time_limit=args.time_limit, device=args.device, progress=not args.quiet)
    print(format_summary(result.as_dict()))
    decoded = decode(container)
    save_model(decoded, out / f"{args.model}.decoded.onnx")
    test = entry.load_test()
    runner = Runner(decoded, resolve(args.device), "decoded")
    logits = np.concatenate([runner.run({"input": test["input"][i:i + 2000]})[0]
                             for i in range(0, len(test["input"]), 2000)])
    accuracy = float(np.mean(logits.argmax(1) == test["labels"]))
    teacher = entry.meta["test_accuracy"]
    print(f"test set ({len(test['labels'])} images, unseen by every pass): dense {teacher:.4f} -> decoded {accuracy:.4f} "
          f"({100 * (accuracy - teacher):+.2f} points), {result.ratio:.1f}x smaller; "
          f"decoded model in {out / (args.model + '.decoded.onnx')}")
    return 0

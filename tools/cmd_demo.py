"""`evonnx demo`: build the lenet300 zoo model if missing, compress it, decode it, and test it on held-out data."""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np


def add_parser(sub) -> argparse.ArgumentParser:
    parser = sub.add_parser("demo", help="compress the lenet300 zoo model end to end (builds it if missing)")
    parser.add_argument("--model", default="lenet300", help="zoo model to use")
    parser.add_argument("--out", default="demo_out", help="folder for the container and decoded model")
    parser.add_argument("--sparsity", type=float, default=0.9)
    parser.add_argument("--max-drop", type=float, default=0.5)
    parser.add_argument("--time-limit", type=float, default=60.0, help="seconds for the sparsity search")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    return parser


def run(args: argparse.Namespace) -> int:
    from evonnx.passes.engine.fitness import Runner
    from evonnx.passes.engine.providers import resolve
    from evonnx.runtime import decode
    from evonnx.runtime.decode import save_model
    from evonnx.tools.cmd_compress import format_summary
    from evonnx.passes.compress import compress
    from evonnx.tools.zoo import build

    say = (lambda *_: None) if args.quiet else print
    entry = build(args.model, log=say)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    container = out / f"{args.model}.evx"
    result = compress(entry.model_path, container, calib=entry.calib_path, sparsity=args.sparsity,
                      max_drop=args.max_drop, time_limit=args.time_limit, device=args.device,
                      progress=not args.quiet, log=say)
    print(format_summary(result.as_dict()))
    decoded = decode(container)
    save_model(decoded, out / f"{args.model}.decoded.onnx")
    test = entry.load_test()
    runner = Runner(decoded, resolve(args.device), "decoded")
    logits = np.concatenate([runner.run({"input": test["input"][i:i + 2000]})[0]
                             for i in range(0, len(test["input"]), 2000)])
    accuracy = float(np.mean(logits.argmax(1) == test["labels"]))
    teacher = entry.meta["test_accuracy"]
    print(f"held-out test set ({len(test['labels'])} images): dense {teacher:.4f} -> decoded {accuracy:.4f} "
          f"({100 * (accuracy - teacher):+.2f} points), {result.ratio:.1f}x smaller; "
          f"decoded model in {out / (args.model + '.decoded.onnx')}")
    return 0

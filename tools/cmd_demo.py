"""`evonnx demo`: build the lenet300 zoo model if missing, load it, and evaluate it with the fitness engine."""
from __future__ import annotations

import argparse
import time

from evonnx.passes.engine.calib import load_npz
from evonnx.passes.engine.fitness import FitnessEngine
from evonnx.passes.state import load_state


def add_parser(sub) -> argparse.ArgumentParser:
    parser = sub.add_parser("demo", help="run evonnx on the lenet300 zoo model (builds it if missing)")
    parser.add_argument("--model", default="lenet300", help="zoo model to use")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    return parser


def run(args: argparse.Namespace) -> int:
    from evonnx.tools.zoo.build import build

    say = (lambda *_: None) if args.quiet else print
    start = time.perf_counter()
    entry = build(args.model, log=say)
    state = load_state(entry.model_path)
    say(f"loaded {entry.model_path}: {len(state.table)} float tensors, {len(state.targets)} targets "
        f"({sum(state.table[n].size for n in state.targets):,} target parameters)")
    calib = load_npz(entry.calib_path, state.model)
    engine = FitnessEngine(state.model, calib, state.targets, device=args.device, label=state.label)
    test = load_npz(entry.test_path, state.model)
    accuracy = engine.accuracy(test)
    print(f"{args.model}: test accuracy {accuracy:.4f} (recorded at build: {entry.meta.get('test_accuracy')}), "
          f"provider {engine.provider}, {time.perf_counter() - start:.1f} s")
    return 0


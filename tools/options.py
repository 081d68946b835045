"""Options shared by several subcommands, and the code that turns them into objects."""
from __future__ import annotations

import argparse

from evonnx.passes.engine.calib import (SYNTHETIC_SAMPLES, CalibData, load_npz, parse_batch_axes, parse_input_shapes,
                                         synthetic)


def add_data_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--calib", metavar="F.npz", help="calibration inputs keyed by input name (+ optional 'labels')")
    parser.add_argument("--input-shape", action="append", metavar="NAME:DIMS",
                        help="fix an input's dynamic dims, e.g. input:1x3x224x224 (repeatable)")
    parser.add_argument("--batch-axis", action="append", metavar="NAME:AXIS",
                        help="an input's sample axis, e.g. state:1, or NAME:none to pass it whole (repeatable)")
    parser.add_argument("--samples", type=int, default=SYNTHETIC_SAMPLES,
                        help="random samples when no --calib is given (default %(default)s)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="where ONNX Runtime runs (default %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default %(default)s)")


def add_worker_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workers", type=int, metavar="N", help="score candidates on N Ray actors of a local Ray "
                        "runtime (the `distributed` extra); the result is the serial one")
    parser.add_argument("--ray-address", metavar="ADDR", help="score candidates on the Ray cluster at ADDR (as "
                        "`ray start --head` prints it; --workers actors, default one per CPU)")


def calibration(args: argparse.Namespace, model) -> CalibData:
    shapes, axes = parse_input_shapes(args.input_shape), parse_batch_axes(args.batch_axis)
    if args.calib:
        return load_npz(args.calib, model, shapes, axes)
    return synthetic(model, args.samples, shapes, seed=args.seed, batch_axes=axes)

"""`evonnx zoo`: build the reference models (trained reproducibly) with their calibration and test sets."""
from __future__ import annotations

import argparse
import json


def add_parser(sub) -> argparse.ArgumentParser:
    parser = sub.add_parser("zoo", help="build or list the reference models")
    zoo = parser.add_subparsers(dest="zoo_command", required=True, metavar="ACTION")
    build = zoo.add_parser("build", help="train and export a zoo model (cached)")
    build.add_argument("name", help="lenet300, lenet5 or resnet50ish")
    build.add_argument("--out", metavar="DIR", help="output folder (default: $EVONNX_ZOO or ~/.cache/evonnx/zoo/NAME)")
    build.add_argument("--force", action="store_true", help="rebuild even if cached")
    build.add_argument("--train-split", action="store_true",
                       help="also write the train split less the calibration samples "
                            "(train-minus-calib.npz, for distill-finetune's `data`)")
    zoo.add_parser("list", help="list the zoo models")
    return parser


def run(args: argparse.Namespace) -> int:
    from evonnx.errors import EvonnxError
    from evonnx.tools.zoo import available, build, train_split  # torch: only when the zoo is used

    if args.zoo_command == "list":
        print("\n".join(available()))
        return 0
    if args.name not in available():
        raise EvonnxError(f"unknown zoo model {args.name!r} (available: {', '.join(available())})")
    entry = build(args.name, args.out, force=args.force)
    paths = {"model": str(entry.model_path), "calib": str(entry.calib_path),
             "test": str(entry.test_path) if entry.test_path else None}
    if args.train_split:
        if entry.train_path is None:
            raise EvonnxError(f"{args.name} is untrained: it has no train split")
        paths["train"] = str(train_split(entry))
    print(json.dumps({**paths, **entry.meta}, indent=2))
    return 0

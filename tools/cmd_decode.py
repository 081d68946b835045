"""`evonnx decode IN.evx -o OUT.onnx [--format fp32|fp16|qdq|qdq-trt]`: rebuild a runnable ONNX model."""
from __future__ import annotations

import argparse
import os

from evonnx.errors import EvonnxError
from evonnx.runtime.decode import FORMATS, decode_to_file


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("decode", help="rebuild an ONNX model from an .evx file",
                              description="Rebuild a runnable ONNX model from an .evx container.")
    p.add_argument("input", metavar="IN.evx", help="the container to decode")
    p.add_argument("-o", "--output", required=True, metavar="OUT.onnx", help="where to write the model (atomically)")
    p.add_argument("--format", choices=FORMATS, default="fp32",
                   help="fp32: dense weights, bit-identical to the search (default); fp16: float16 weights + Cast; "
                        "qdq: integer codes + DequantizeLinear where the codes allow it; qdq-trt: the same as "
                        "TensorRT takes it, INT8 codes with zero points of 0")
    return p


def run(args: argparse.Namespace) -> int:
    if os.path.abspath(args.output) == os.path.abspath(args.input):
        raise EvonnxError(f"{args.output}: the output would overwrite the input container")
    path = decode_to_file(args.input, args.output, args.format)
    data = path.with_name(path.name + ".data")
    size = path.stat().st_size + (data.stat().st_size if data.is_file() else 0)
    if not getattr(args, "quiet", False):
        print(f"{args.output}: {size} bytes ({args.format}{', weights in ' + data.name if data.is_file() else ''})")
    return 0

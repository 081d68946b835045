"""`evonnx calib text|images|audio ... --model M.onnx -o OUT.npz`: build the calibration .npz that
`evonnx compress --calib` takes from real sentences, images or sound files."""
from __future__ import annotations

import argparse

from evonnx.tools.calib.text import ADDITIVE_PAD, MASK_MODES
from evonnx.tools.calib.audio import CROPS


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text}: must be at least 1")
    return value


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("calib", help="build a calibration .npz from text, images or sound files",
                              description="Build the .npz that `evonnx compress --calib` takes (one array per "
                                          "model input, keyed by its name; optional integer labels) from real "
                                          "files, shaped and typed for the model's inputs.")
    kinds = p.add_subparsers(dest="kind", required=True, metavar="KIND")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--model", required=True, metavar="MODEL.onnx", help="the model to feed (weights not loaded)")
    common.add_argument("-o", "--output", required=True, metavar="OUT.npz", help="where to write (atomically)")
    common.add_argument("--limit", type=_positive, metavar="N", help="at most N samples, drawn with --seed")
    common.add_argument("--seed", type=int, default=0, help="for --limit and random crops (default 0)")
    common.add_argument("--input", metavar="NAME", help="the model input to fill, when several could take the data")

    t = kinds.add_parser("text", parents=[common], help="sentences through a tokenizer.json",
                         description="One sentence a line (blank lines skipped), tokenized with a `tokenizers` "
                                     "tokenizer.json and mapped to the model's token inputs by name and dtype (ids, "
                                     "attention mask, token types, positions). Padded to the model's fixed token "
                                     "length, else to --max-length, else to the longest sentence; truncated to it.")
    t.add_argument("text_file", metavar="FILE", help="UTF-8 text, one sentence a line")
    t.add_argument("--tokenizer", required=True, metavar="tokenizer.json")
    t.add_argument("--max-length", type=_positive, metavar="N", help="tokens a sequence, for models that do not fix it")
    t.add_argument("--labels", metavar="FILE", help="one integer label a non-blank line, as many as sentences")
    t.add_argument("--mask", choices=MASK_MODES, default="auto",
                   help="a float attention mask: additive (0 at tokens, --mask-value at pads) or binary (1/0); "
                        "auto: additive when the model adds it to scores or it has more than 2 dims")
    t.add_argument("--mask-value", type=float, default=ADDITIVE_PAD, metavar="V",
                   help=f"an additive mask's value at pads (default {ADDITIVE_PAD:g})")

    i = kinds.add_parser("images", parents=[common], help="image files, resized, cropped and normalised",
                         description="Every image under DIR (recursively): resized so the shorter side covers the "
                                     "target size, then center-cropped to it; x / --scale, then (x - mean) / std "
                                     "per channel. Size, layout and channels default to the model's fixed dims.")
    i.add_argument("directory", metavar="DIR")
    i.add_argument("--size", metavar="S|HxW", help="target side (224) or height x width (48x192)")
    i.add_argument("--mean", type=float, nargs="+", metavar="M", help="per channel, in the model's channel order")
    i.add_argument("--std", type=float, nargs="+", metavar="S", help="per channel, in the model's channel order")
    i.add_argument("--scale", type=float, default=255.0, help="pixel values are divided by it first (default 255)")
    i.add_argument("--layout", choices=("nchw", "nhwc"), help="default: from the model's input shape, else nchw")
    i.add_argument("--bgr", action="store_true", help="channels in BGR order")
    i.add_argument("--gray", action="store_true", default=None,
                   help="one luma channel (the default when the model takes 1)")
    i.add_argument("--labels-from-dirs", action="store_true",
                   help="each subfolder of DIR is a class: labels 0, 1, ... in sorted folder order")

    a = kinds.add_parser("audio", parents=[common], help="sound files, mono, resampled, fixed length",
                         description="Every sound file under DIR (WAV, FLAC, OGG, ... through soundfile), mixed "
                                     "down to mono, resampled to --rate (polyphase windowed-sinc, numpy only) and "
                                     "cut or zero-padded to --seconds, else to the model's fixed length. A sample "
                                     "rate input gets --rate, a recurrent state input zeros.")
    a.add_argument("directory", metavar="DIR")
    a.add_argument("--rate", type=_positive, required=True, metavar="HZ", help="the model's sample rate")
    a.add_argument("--seconds", type=float, metavar="S", help="clip length (default: the model's fixed length)")
    a.add_argument("--crop", choices=CROPS, default="start", help="where longer files are cut (default start)")
    return p


def run(args: argparse.Namespace) -> int:
    from evonnx.tools import calib

    calib.check_output(args.output)
    model = calib.load_model(args.model)
    common = dict(limit=args.limit, seed=args.seed)
    if args.kind == "text":
        from evonnx.tools.calib import text
        built = text.build(args.text_file, args.tokenizer, model, args.max_length, args.labels, ids_input=args.input,
                           mask=args.mask, mask_value=args.mask_value, **common)
    elif args.kind == "images":
        from evonnx.tools.calib import images
        built = images.build(args.directory, model, args.size, args.mean, args.std, args.scale, args.layout, args.bgr,
                             args.gray, args.labels_from_dirs, input_name=args.input, **common)
    else:
        from evonnx.tools.calib import audio
        built = audio.build(args.directory, model, args.rate, args.seconds, args.crop, input_name=args.input, **common)
    calib.save(built, model, args.output)
    if not getattr(args, "quiet", False):
        for note in built.notes:
            print(note)
    print(f"{args.output}: {calib.summary(built)}")
    return 0

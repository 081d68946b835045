"""`evonnx compress`: the default pipeline (Directed Evolution, bit allocation, encoding), verified by decoding."""
from __future__ import annotations

import argparse
import json
import math
import warnings

from evonnx.errors import EvonnxError
from evonnx.passes.engine.calib import HOLDOUT, parse_batch_axes, parse_input_shapes
from evonnx.tools.options import add_data_options, add_worker_options

AUTO_HELP = ("auto (default): budget-driven: Directed Evolution tries 50, 75, 87.5, 93.75, 96.9, 98.4 %%, each from "
             "the last accepted student, then bisects twice; it keeps the sparsest student whose drop is within half "
             "of --max-drop, and the bit allocation gets the rest. Or a fixed global sparsity in [0, 1) (0: no "
             "pruning), whose result must still pass the budget")
METRIC_HELP = ("the task metric the budget is measured in (default auto: accuracy for a classifier with labels, "
               "else top-1 agreement, else cosine): accuracy, agreement, cosine (of the whole outputs, pad tokens "
               "left out), cosine:mean or cosine:first (of token outputs [N, tokens, features] pooled: the mean of "
               "the real tokens, or the first token, as sentence embeddings are), ctc[:BLANK] (character error rate "
               "of greedy CTC strings; blank 0), detection[:LAYOUT[:CONF[:FOUND]]] (teacher detections above CONF, "
               "default 0.5, the student misses at IoU 0.5 with its own above FOUND, default CONF; LAYOUT auto, "
               "yolov8, yolox, yolov5 or boxes), dense[:THRESHOLD] "
               "(1 - IoU of the thresholded maps)")


def add_parser(sub) -> argparse.ArgumentParser:
    parser = sub.add_parser("compress", help="compress an ONNX model into an .evx container",
                            description="The budget is a contract: the result ships only when its drop against the "
                            "teacher, measured on held-out calibration samples at the 95 % upper bound, is within "
                            "--max-drop; otherwise a safer result ships, or nothing is written and the exit code is 3.")
    parser.add_argument("model", help="the ONNX model")
    parser.add_argument("-o", "--output", required=True, metavar="OUT.evx", help="the container to write")
    add_data_options(parser)
    parser.add_argument("--synthetic-ok", action="store_true",
                        help="without --calib, compress against random standard-normal inputs (the budget then says "
                             "little about real data)")
    parser.add_argument("--sparsity", metavar="S|auto", help=AUTO_HELP)
    parser.add_argument("--bits", default="auto", help="auto (default: searched per layer within the budget) or a fixed 1-8")
    parser.add_argument("--max-drop", type=float, metavar="POINTS",
                        help="the budget: points of --metric the result may lose against the teacher (default 0.5; "
                             "with --max-bytes, none unless given; inf: none enforced, the searches aim at 0.5 and the drop is "
                             "reported)")
    parser.add_argument("--metric", default="auto", help=METRIC_HELP)
    parser.add_argument("--holdout", type=float, default=HOLDOUT, metavar="SHARE",
                        help="share of the calibration samples held out of every pass to check the budget on "
                             "(stratified by label where labels exist; default %(default)s)")
    parser.add_argument("--max-bytes", metavar="N|Rx", help="bound the file: N bytes, or the model file's size / R "
                        "(e.g. 100x); the bit allocation (the default pipeline's, or the one of --config) fits it")
    parser.add_argument("--time-limit", type=float, metavar="SECONDS",
                        help="seconds for the whole run (default: none): the searches are sized to fit from the "
                        "measured time of one forward pass, and a short limit gives a less compressed result within "
                        "budget rather than a ruined one (not with --config: its passes keep their own time_limit)")
    parser.add_argument("--workdir", metavar="DIR", help="checkpoints and logs; a fresh run starts there, and an "
                        "unfinished run found there is refused unless --resume is given")
    parser.add_argument("--resume", action="store_true", help="continue the unfinished run in --workdir (same model, "
                        "calibration and options) from its last Directed Evolution checkpoint")
    parser.add_argument("--config", metavar="FILE", help="a pipeline file (.toml/.json/.yaml) instead of the default")
    parser.add_argument("--report", metavar="DIR", help="write report.md, summary.json and PNG plots (with "
                        "matplotlib) there")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    add_worker_options(parser)
    return parser


def _sparsity(text: str | None) -> float | str | None:
    if text in (None, "auto"):
        return text
    try:
        value = float(text)
    except ValueError:
        raise EvonnxError(f"--sparsity must be auto or a number in [0, 1), not {text!r}") from None
    if not 0 <= value < 1:
        raise EvonnxError(f"--sparsity must be in [0, 1), not {value}")
    return value


def _bits(text: str) -> int | str:
    if text == "auto":
        return text
    if not text.isdigit() or not 1 <= int(text) <= 8:
        raise EvonnxError(f"--bits must be auto or 1 to 8, not {text!r}")
    return int(text)


def run(args: argparse.Namespace) -> int:
    from evonnx.passes.compress import compress

    if args.resume and not args.workdir:
        raise EvonnxError("--resume needs --workdir")
    if args.quiet:  # the result and errors only
        import onnxruntime as ort
        ort.set_default_logger_severity(4)
        warnings.simplefilter("ignore")
    result = compress(args.model, args.output, calib=args.calib, input_shapes=parse_input_shapes(args.input_shape),
                      batch_axes=parse_batch_axes(args.batch_axis),
                      samples=args.samples, synthetic_ok=args.synthetic_ok, sparsity=_sparsity(args.sparsity),
                      bits=_bits(args.bits), max_drop=args.max_drop, metric=args.metric, holdout=args.holdout,
                      time_limit=args.time_limit, seed=args.seed, workdir=args.workdir,
                      resume=args.resume, pipeline=args.config, device=args.device, progress=not args.quiet,
                      report=args.report, max_bytes=args.max_bytes, workers=args.workers,
                      ray_address=args.ray_address)
    summary = result.as_dict()
    print(json.dumps(summary, indent=2) if args.json else format_summary(summary))
    return 0


def _names(names: list[str], shown: int = 4) -> str:
    more = f", … ({len(names)} in all)" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more


def format_summary(s: dict) -> str:
    from evonnx.passes.compress.report import fidelity_lines

    pct = lambda v: "-" if v is None else f"{100 * v:.2f} %"  # noqa: E731
    lines = [f"{s['output']}: {s['container_bytes']:,} bytes from {s['original_bytes']:,} ({s['ratio']:.1f}x)",
             *[f"{what}: {figure}" for what, figure in fidelity_lines(s)],
             f"on the calibration samples: sparsity {pct(s['sparsity'])}  accuracy {pct(s['accuracy'])} "
             f"(teacher {pct(s['teacher_accuracy'])})  top-1 agreement {pct(s['top1_agreement'])}  "
             f"fitness {s['fitness']:.4g}",
             f"provider {s['provider']}  time {s['seconds']:.1f} s  decoded and verified (max output diff "
             f"{s['max_output_diff']:.2g})",
             f"{'tensor':<28}{'role':<10}{'shape':<18}{'sparsity':>9}  {'scheme':<9}{'code bits':>10}{'bits/w':>8}"]
    for r in s["layers"]:
        entries = math.prod(r["shape"])
        per = f"{8 * r['coded_bytes'] / entries:.2f}" if entries else "-"
        lines.append(f"{r['name'][:27]:<28}{r['role']:<10}{'x'.join(map(str, r['shape'])):<18}"
                     f"{100 * r['sparsity']:>8.1f}%  {r['scheme']:<9}{r['bits']:>10}{per:>8}")
    for t in s.get("auto", []):
        lines.append(f"auto sparsity {100 * t['sparsity']:.2f} %: drop {t['drop']:.3f} points "
                     f"({'kept' if t['kept'] else 'beyond ' + format(t['limit'], 'g')})")
    by_reason: dict[str, list[str]] = {}
    for k in s.get("skipped", []):
        by_reason.setdefault(k["reason"], []).append(k["name"])
    lines += [f"left untouched ({reason}): {_names(names)}" for reason, names in by_reason.items()]
    if s.get("lossless"):
        rows = s["lossless"]
        lines.append(f"already quantized, coded losslessly: {len(rows)} tensors in "
                     f"{sum(r['coded_bytes'] for r in rows):,} bytes (zstd -19: "
                     f"{sum(r['zstd_bytes'] for r in rows):,}): {_names([r['name'] for r in rows])}")
    if s.get("kept_exact"):
        lines.append(f"kept exact (not exercised by the calibration data): {_names(s['kept_exact'])}")
    lines += s.get("notes", [])
    return "\n".join(lines)

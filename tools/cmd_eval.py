"""`evonnx eval`: fidelity of a model against a teacher (or itself), task accuracy, and the provider used."""
from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING

from evonnx.tools.options import add_data_options, calibration

if TYPE_CHECKING:
    from evonnx.passes.engine.metrics import Metrics


def add_parser(sub) -> argparse.ArgumentParser:
    parser = sub.add_parser("eval", help="evaluate a model (against a teacher) on calibration data")
    parser.add_argument("model", help="the ONNX model to evaluate")
    parser.add_argument("--against", metavar="TEACHER.onnx", help="compare with this teacher model")
    parser.add_argument("--metric", default="auto", help="with --against: the task metric whose drop is reported "
                        "(as compress --metric; default auto)")
    parser.add_argument("--json", action="store_true", help="print JSON")
    add_data_options(parser)
    return parser


def run(args: argparse.Namespace) -> int:
    from evonnx.passes.engine.fitness import FitnessEngine  # ONNX Runtime: the parser builds without it
    from evonnx.passes.engine.metrics import compare
    from evonnx.passes.engine.tasks import per_sample, pick
    from evonnx.passes.state import load_state

    teacher = load_state(args.against or args.model)
    student = load_state(args.model) if args.against else teacher
    engine = FitnessEngine(teacher.model, calibration(args, teacher.model), [], device=args.device,
                           label=teacher.label, held=teacher.held)
    outputs = engine.model_outputs(student.model, student.label, student.held) if args.against else engine.teacher
    metrics = compare(engine.output_names, engine.teacher, outputs, engine.calib.labels)
    task = {}
    if args.against:
        teacher_samples = per_sample(engine.teacher, engine.axes)
        metric = pick(args.metric, teacher_samples, engine.output_names, engine.calib.labels, engine.axes)
        task = metric.drop(teacher_samples, per_sample(outputs, engine.axes), engine.calib.labels).as_dict()
    summary = {"model": args.model, "teacher": args.against, "provider": engine.provider,
               "samples": engine.calib.num_samples, "calibration": engine.calib.source,
               "weights": len(student.table), "targets": len(student.table.targets),
               "skipped": [vars(s) for s in student.table.skipped], **({"task": task} if task else {}),
               **metrics.as_dict()}
    print(json.dumps(summary, indent=2) if args.json else format_metrics(summary, metrics))
    return 0


def format_metrics(summary: dict, metrics: Metrics) -> str:
    lines = [f"model      {summary['model']}" + (f"  (teacher {summary['teacher']})" if summary["teacher"] else ""),
             f"provider   {summary['provider']}",
             f"data       {summary['samples']} samples from {summary['calibration']}",
             f"weights    {summary['weights']} float tensors, {summary['targets']} compression targets"
             + (f", {len(summary['skipped'])} skipped" if summary["skipped"] else ""),
             *([f"task       {summary['task']['metric']} drop {summary['task']['points']:.3g} ± "
                f"{summary['task']['ci95']:.3g} points (95 %), n={summary['task']['n']}"] if "task" in summary else []),
             f"{'output':<20}{'KL':>10}{'top-1':>8}{'rel MSE':>11}{'cosine':>9}{'accuracy':>10}"]
    fmt = lambda v, spec: format(v, spec) if v is not None else "-"  # noqa: E731
    for o in metrics.outputs:
        lines.append(f"{o.name[:19]:<20}{fmt(o.kl, '.3g'):>10}{fmt(o.top1, '.4f'):>8}{fmt(o.rel_mse, '.3g'):>11}"
                     f"{fmt(o.cosine, '.5f'):>9}{fmt(o.accuracy, '.4f'):>10}")
    return "\n".join(lines)

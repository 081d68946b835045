"""`evonnx.compress`: load → passes → encode → decode and verify → atomic write → report."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import numpy as np

from evonnx.errors import EvonnxError
from evonnx.formats.atomic import atomic_write_bytes
from evonnx.passes.base import PassContext
from evonnx.passes.compress.auto import auto_sparsity
from evonnx.passes.compress.container import describe, encode_and_verify, run_meta, source_bytes
from evonnx.passes.compress.default import default_pipeline
from evonnx.passes.compress.result import CompressResult, layer_rows
from evonnx.passes.compress.size import fit_file_size, max_bytes_of
from evonnx.passes.compress.timing import Budget, check_options, forward_seconds, search_seconds
from evonnx.passes.compress.workdir import claim, finish_run, read_logs, work_dir
from evonnx.passes.engine.calib import SYNTHETIC_SAMPLES, load_npz, synthetic
from evonnx.passes.engine.metrics import compare
from evonnx.passes.pipeline import Pipeline
from evonnx.passes.sparsity.checkpoint import fingerprint
from evonnx.passes.state import ModelState, load_state


def compress(model: str | Path, output: str | Path, *, calib: str | Path | None = None,
             input_shapes: dict[str, list[int]] | None = None, batch_axes: dict[str, int | None] | None = None,
             samples: int = SYNTHETIC_SAMPLES,
             sparsity: float | str = 0.9, bits: int | str = "auto", max_drop: float = 0.5,
             time_limit: float | None = None, seed: int = 0, workdir: str | Path | None = None,
             resume: bool = False, pipeline: Pipeline | str | Path | None = None, device: str = "auto",
             progress: bool = True, report: str | Path | None = None, max_bytes: int | str | None = None,
             log: Callable[[str], None] = print) -> CompressResult:
    """Compress an ONNX model into an .evx container, decode it again and verify it before writing it;
    with `report`, also write report.md, summary.json and plots in that folder. `max_bytes` (a byte count,
    or "100x": a ratio against the model's file) bounds the file: the bit allocation fits it instead of
    `max_drop`. `batch_axes` names inputs' sample axes (None: no sample axis) where the model's dims don't tell."""
    start = time.perf_counter()
    check_options(time_limit, max_drop, samples)
    output = Path(output)
    if not output.parent.exists():
        raise EvonnxError(f"{output}: folder {output.parent} does not exist")
    if resume and workdir is None:
        raise EvonnxError("resuming needs the work dir of the run (--workdir)")
    if sparsity == "auto" and pipeline is not None:
        raise EvonnxError("--sparsity auto drives the default pipeline; it cannot be combined with --config")
    original = source_bytes(model)
    limit_bytes = max_bytes_of(max_bytes, original, sparsity, bits, pipeline)
    state = load_state(model, allow_empty=True)
    data = (load_npz(calib, state.model, input_shapes, batch_axes) if calib
            else synthetic(state.model, samples, input_shapes, seed, batch_axes))
    if not calib:
        log(f"no --calib: {samples} random standard-normal inputs stand in for real ones, so the fidelity "
            "measured on them says little about real data")
    if isinstance(pipeline, (str, Path)):
        pipeline = Pipeline.from_file(pipeline)
    skipped = [{"name": s.name, "reason": s.reason} for s in state.table.skipped]
    if skipped:
        log(f"left untouched: {len(skipped)} tensors already quantized or setting shapes "
            f"({', '.join(s['name'] for s in skipped[:4])}{', …' if len(skipped) > 4 else ''})")
    notes, trials, targets = [], [], state.targets
    with work_dir(workdir, report) as wd:
        ctx = PassContext(data, device=device, seed=seed, workdir=wd, progress=progress, log=log)
        engine = ctx.engine(state)
        kept = _unexercised(state, engine)
        if kept:
            log(f"not exercised by the calibration data (a branch it never takes?): {', '.join(kept)}"
                + ("; kept exact" if pipeline is None else "; the --config pipeline compresses them blind"))
        if workdir is not None:
            settings = {"sparsity": sparsity, "bits": bits, "max_drop": max_drop, "time_limit": time_limit,
                        **({"max_bytes": limit_bytes} if limit_bytes else {}),
                        "pipeline": describe(pipeline, full=True) if pipeline else None, "keep": kept}
            labels = {} if data.labels is None else {"labels": data.labels}
            claim(wd, fingerprint(state.model, {**data.inputs, **labels}, settings, seed), resume, state.label, log)
        prune = [n for n in targets if n not in kept]
        budget = Budget()
        search_limit, forward = time_limit, 0.0
        if time_limit and targets and pipeline is None:
            forward = forward_seconds(engine)
            search_limit = search_seconds(time_limit, time.perf_counter() - start, forward, state, log)
            budget = Budget.fit(len(prune), forward, search_limit)
            if budget.describe():
                log(f"time limit {time_limit:g} s ({search_limit:.0f} s to search): {budget.describe()}")
        if not targets:
            notes.append("nothing to compress: no conv kernel, matrix or embedding among the float weights; "
                         "the container holds the model as it is")
            log(notes[-1])
            steps: list[dict] = []
        elif sparsity == "auto":
            state, steps, trials = auto_sparsity(state, ctx, engine, bits, max_drop, search_limit, prune, kept, budget,
                                                 log, forward)
        elif limit_bytes:
            pipeline = pipeline or default_pipeline(sparsity, bits, max_drop, search_limit, prune=prune, keep=kept,
                                                    budget=budget, target_bytes=limit_bytes)
            state, pipeline = fit_file_size(state, ctx, pipeline, limit_bytes,
                                             lambda p: run_meta(Path(str(model)).name, seed, describe(p)), log)
            steps = describe(pipeline)
        else:
            pipeline = pipeline or default_pipeline(sparsity, bits, max_drop, search_limit, prune=prune, keep=kept,
                                                    budget=budget)
            state = pipeline.run(state, ctx)
            steps = describe(pipeline)
        search_log = read_logs(wd) if wd is not None else []
    meta = run_meta(Path(str(model)).name, seed, steps, trials)
    blob, records, measured, diff = encode_and_verify(state, engine, meta)
    atomic_write_bytes(output, blob)
    if workdir is not None:
        finish_run(Path(workdir))

    metrics = compare(engine.output_names, engine.teacher, measured, engine.calib.labels)
    result = CompressResult(
        output=str(output), original_bytes=original, container_bytes=len(blob), ratio=original / len(blob),
        sparsity=state.global_sparsity() if targets else 0.0, provider=engine.provider,
        seconds=time.perf_counter() - start, teacher_accuracy=engine.teacher_metrics().accuracy,
        accuracy=metrics.accuracy, top1_agreement=metrics.top1, fitness=metrics.fitness, max_output_diff=diff,
        layers=layer_rows(state, records), skipped=skipped, kept_exact=kept, notes=notes, auto=trials,
        history=state.history, search_log=search_log)
    if report is not None:
        from evonnx.tools.report import write_report
        for line in write_report(result, report):
            log(line)
    return result


def _unexercised(state: ModelState, engine) -> list[str]:
    """Targets read only inside subgraphs (If/Loop/Scan bodies) whose zeroing changes no output on the
    calibration data: a branch the data never takes, so no fidelity can be measured for them."""
    inner = [w.name for w in state.table.targets if w.consumers and all(c.graph for c in w.consumers)]
    if not inner:
        return []
    base = engine.outputs({})
    return [n for n in inner if all(np.array_equal(a, b) for a, b in
                                    zip(base, engine.outputs({n: np.zeros_like(state.original(n))})))]

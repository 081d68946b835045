"""`evonnx.compress`: load → hold out → passes → encode, decode, verify, check the budget → atomic write → report."""
from __future__ import annotations

import contextlib
import inspect
import logging
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from evonnx.errors import EvonnxError
from evonnx.formats.atomic import atomic_write_bytes
from evonnx.passes.base import PassContext
from evonnx.passes.compress.auto import auto_sparsity
from evonnx.passes.compress.container import describe, run_meta, source_bytes
from evonnx.passes.compress.default import default_pipeline
from evonnx.passes.compress.guard import Guard, bit_record, finer, safer, same_pruning, searched_first
from evonnx.passes.compress.request import CompressRequest
from evonnx.passes.compress.result import CompressResult, layer_rows, lossless_rows
from evonnx.passes.compress.size import fit_file_size, max_bytes_of
from evonnx.passes.compress.timing import (BitCosts, Budget, fallback_seconds, forward_seconds, search_seconds,
                                           ship_seconds)
from evonnx.passes.compress.workdir import claim, finish_run, read_logs, work_dir
from evonnx.passes.directed_evolution import DirectedEvolution
from evonnx.passes.engine.calib import fixed_batch, from_python, load_npz, synthetic
from evonnx.passes.engine.heap import return_freed_memory
from evonnx.passes.engine.metrics import compare
from evonnx.passes.engine.tasks import per_sample, pick
from evonnx.passes.sparsity.checkpoint import fingerprint
from evonnx.passes.sparsity.common import refit_seconds
from evonnx.passes.sparsity.layers import analyse
from evonnx.passes.state import ModelState, load_state

log = logging.getLogger(__name__)



def compress(model: str | Path | bytes, output: str | Path, **options) -> CompressResult:
    """Compress an ONNX model into an .evx container, decode it again and verify it before writing it.
    `options` are the fields of CompressRequest (passes/compress/request.py): data, budget, search, where it
    runs, files. No result within budget raises BudgetError and writes nothing."""
    return run(CompressRequest(model, output, **options))


compress.__signature__ = inspect.signature(CompressRequest).replace(return_annotation=CompressResult)


def run(r: CompressRequest) -> CompressResult:
    """Carry out a checked request (see `compress`)."""
    start = time.perf_counter()
    return_freed_memory()
    pool = _workers(r.workers, r.ray_address, r.device)
    enforced = r.enforced
    original = source_bytes(r.model)
    limit_bytes = max_bytes_of(r.max_bytes, original, r.sparsity, r.bits, r.pipeline)
    state = load_state(r.model, allow_empty=True)
    data = (load_npz(r.calib, state.model, r.input_shapes, r.batch_axes) if isinstance(r.calib, (str, Path))
            else synthetic(state.model, r.samples, r.input_shapes, r.seed, r.batch_axes) if r.calib is None
            else from_python(r.calib, state.model, r.input_shapes, r.batch_axes))
    if r.calib is None and not r.synthetic_ok:
        raise EvonnxError("no --calib: a budget measured on random inputs says nothing about real ones; give "
                          "calibration inputs (an .npz keyed by input name, optional 'labels') or --synthetic-ok")
    if r.calib is None:
        log.warning(f"no --calib: {r.samples} random standard-normal inputs stand in for real ones, so the "
                    "fidelity measured on them says little about real data")
    fit, held = data.split(r.holdout, r.seed, fixed_batch(state.model, data.axes, state.label) or 1)
    log.info(f"held out {held.num_samples} of {data.num_samples} calibration samples for the budget check"
             if held is not None else f"{data.num_samples} calibration sample(s): too few to hold any out; the budget "
             "is checked on the samples the search fits to, which is optimistic")
    skipped = [{"name": s.name, "reason": s.reason} for s in state.table.skipped]
    if state.table.lossless:
        log.info(f"already quantized: {len(state.table.lossless)} int8/uint8 tensors, stored losslessly as "
                 "entropy-coded records")
    if skipped:
        log.info(f"left untouched: {len(skipped)} tensors already quantized or setting shapes "
                 f"({', '.join(s['name'] for s in skipped[:4])}{', …' if len(skipped) > 4 else ''})")
    notes, trials, targets = [], [], state.targets
    search_drop = r.aim
    with work_dir(r.workdir, r.report) as wd, pool as pool_workers:
        ctx = PassContext(fit, device=r.device, seed=r.seed, workdir=wd, progress=r.progress, workers=pool_workers)
        engine = ctx.engine(state)
        ctx.metric = pick(r.metric, per_sample(engine.teacher, engine.axes), engine.output_names, fit.labels,
                          engine.axes)
        engine.balance(ctx.metric)
        log.info(f"fidelity metric: {ctx.metric.label}" + (f", budget {enforced:g} points" if enforced is not None
                                                           else ", no budget enforced (reported only)"))
        guard = Guard(state, ctx, held, ctx.metric, enforced)
        kept = _unexercised(state, engine)
        if kept:
            log.info(f"not exercised by the calibration data (a branch it never takes?): {', '.join(kept)}"
                     + ("; kept exact" if r.pipeline is None else "; the --config pipeline compresses them blind"))
        if r.workdir is not None:
            settings = {"sparsity": r.sparsity, "bits": r.bits, "max_drop": r.max_drop, "time_limit": r.time_limit,
                        "metric": ctx.metric.label, "holdout": r.holdout,
                        **({"max_bytes": limit_bytes} if limit_bytes else {}),
                        "pipeline": describe(r.pipeline, full=True) if r.pipeline else None, "keep": kept}
            labels = {} if data.labels is None else {"labels": data.labels}
            claim(wd, fingerprint(state.model, {**data.inputs, **labels}, settings, r.seed, held=state.held), r.resume,
                  state.label)
        prune = [n for n in targets if n not in kept]
        timing, costs = Budget(), BitCosts()
        search_limit, forward = r.time_limit, 0.0
        if r.time_limit and targets:  # (never with a --config pipeline)
            forward = forward_seconds(engine)
            search_limit = search_seconds(r.time_limit, time.perf_counter() - start, forward, state)
            costs = BitCosts.of(state, prune, forward, engine.calib.num_samples)
            timing = Budget.fit(len(prune), forward, search_limit, prunes=r.sparsity != 0, costs=costs,
                                refits=refit_seconds(analyse(state, prune), DirectedEvolution.Config()),
                                needs_bits=bool(limit_bytes))
            settings = timing.describe(bits=r.sparsity != "auto")
            if settings:
                log.info(f"time limit {r.time_limit:g} s ({search_limit:.0f} s to search): {settings}")
        fallbacks: tuple[Iterator, ...] = ()
        if not targets:
            notes.append("nothing to compress: no conv kernel, matrix or embedding among the float weights; "
                         "the container holds the model as it is")
            log.info(notes[-1])
            steps: list[dict] = []
            result = state
        elif r.sparsity == "auto":
            result, steps, trials, rungs = auto_sparsity(state, ctx, engine, r.bits, search_drop, search_limit,
                                                         prune, kept, timing, forward, costs)
            fallbacks = (finer(bit_record(result), rungs[-1] if rungs else state, ctx, kept),
                         safer(rungs, state, ctx, r.bits, kept))
        elif limit_bytes:
            pipeline = r.pipeline or default_pipeline(r.sparsity, r.bits, search_drop, search_limit, prune=prune,
                                                      keep=kept, budget=timing, target_bytes=limit_bytes)
            result, pipeline = fit_file_size(state, ctx, pipeline, limit_bytes,
                                             lambda p: run_meta(Path(str(r.model)).name, r.seed, describe(p)))
            steps = describe(pipeline)
        elif r.pipeline is not None:
            result = r.pipeline.run(state, ctx)
            steps = describe(r.pipeline)
        else:
            full = default_pipeline(r.sparsity, r.bits, search_drop, search_limit, prune=prune, keep=kept,
                                    budget=timing)
            last = len(full.passes) - 1
            pruned = full.run(state, ctx, stop=last)
            result, steps = full.run(pruned, ctx, start=last), describe(full)
            if r.bits == "auto":
                fallbacks = (finer(bit_record(result), pruned, ctx, kept, steps[:last]),
                             same_pruning(pruned, ctx, kept, steps[:last]))
        meta = lambda s: run_meta(Path(str(r.model)).name, r.seed, s, trials)  # noqa: E731
        # a fallback of the searched bits starts only where it ends before the time kept for shipping
        searched = bit_record(result)
        deadline = (start + r.time_limit - ship_seconds(forward, state)
                    - fallback_seconds(forward, state, searched and searched["allocation"]) if r.time_limit else None)
        candidates = searched_first(result, steps, *fallbacks)
        del result  # the guard lets it go once it has moved past it
        shipped = guard.ship(candidates, engine, meta, deadline)
        search_log = read_logs(wd) if wd is not None else []
    state, verified = shipped.state, shipped.verified
    atomic_write_bytes(r.output, verified.blob)
    if r.workdir is not None:
        finish_run(Path(r.workdir))
    if shipped.rejected:
        first = shipped.rejected[0]
        notes.append(f"shipped {shipped.what}: the searched result was beyond the budget on held-out data"
                     + (f" at its 95 % bound only (measured {first['points']:.3g} points): {first['n']} held-out "
                        "samples are too few to certify it, and more calibration samples would let it ship"
                        if first["points"] <= (enforced or 0) else ""))
    metrics = compare(engine.output_names, engine.teacher, verified.measured, engine.calib.labels, engine.groups)
    calib_drop = ctx.metric.drop(per_sample(engine.teacher, engine.axes), per_sample(verified.measured, engine.axes),
                                 fit.labels)
    within = f": within --max-drop {enforced:g}" if enforced is not None else ""
    log.info(f"{shipped.drop.describe()} on {shipped.data}{within}")
    lossless = lossless_rows(verified.stats)
    result = CompressResult(
        output=str(r.output), original_bytes=original, container_bytes=len(verified.blob),
        ratio=original / len(verified.blob),
        sparsity=state.global_sparsity() if targets else 0.0, provider=engine.provider,
        seconds=time.perf_counter() - start, teacher_accuracy=engine.teacher_metrics().accuracy,
        accuracy=metrics.accuracy, top1_agreement=metrics.top1, fitness=metrics.fitness,
        max_output_diff=verified.max_diff, metric=ctx.metric.label, max_drop=enforced,
        held_out={"data": shipped.data, **shipped.drop.as_dict()},
        calibration={"data": f"the {fit.num_samples} calibration samples the search fitted to",
                     **calib_drop.as_dict()},
        shipped=shipped.what, rejected=shipped.rejected,
        layers=layer_rows(state, verified.records, verified.stats), skipped=skipped, lossless=lossless,
        kept_exact=kept, notes=notes,
        auto=trials,
        history=state.history, search_log=search_log)
    if r.report is not None:
        from evonnx.passes.compress.report import write_report
        for line in write_report(result, r.report):
            log.info(line)
    return result


def _workers(count: int | None, address: str | None, device: str):
    """The Ray actors of a run (needs the `distributed` extra), or none."""
    if count is None and address is None:
        return contextlib.nullcontext()
    from evonnx.passes.engine.distributed import Workers
    return Workers(count, address, device)


def _unexercised(state: ModelState, engine) -> list[str]:
    """Targets read only inside subgraphs (If/Loop/Scan bodies) whose zeroing changes no output on the
    calibration data: a branch the data never takes, so no fidelity can be measured for them."""
    inner = [w.name for w in state.table.targets if w.consumers and all(c.graph for c in w.consumers)]
    if not inner:
        return []
    base = engine.outputs({})
    return [n for n in inner if all(np.array_equal(a, b) for a, b in
                                    zip(base, engine.outputs({n: np.zeros_like(state.original(n))})))]

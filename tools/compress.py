"""`evonnx.compress`: load → passes → encode → decode and verify → atomic write → report. The CLI's `compress`.

Work dir (`workdir`): `run.json` names the run (a fingerprint of the model, calibration data, settings and
seed) and whether it finished; the passes keep their checkpoints in sub-folders. Without `resume` a fresh
run starts there (an unfinished run in it is refused, not overwritten); with `resume` the run recorded
there must be this very run, and Directed Evolution continues from its checkpoint.

`sparsity="auto"`: Directed Evolution climbs a ladder of global sparsities (the kept fraction halves each
rung: 50 %, 75 %, 87.5 %, …), each rung continuing from the last accepted student, then bisects between
the last rung within budget and the first beyond it. A rung is accepted when its drop against the teacher
(accuracy points with labels, taken at measured + 1 standard error, else top-1 agreement points, else
cosine points: 100 x (1 - the lowest output's mean cosine)) is within
half of `max_drop`; the bit allocation gets what is left of `max_drop`.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import onnx

from evonnx.errors import EvonnxError
from evonnx.formats.atomic import atomic_write_bytes
from evonnx.formats.container import encode_evx, read_evx
from evonnx.formats.tensor import QuantizedTensor
from evonnx.passes.base import Pass, PassContext
from evonnx.passes.bit_allocation import _loss
from evonnx.passes.dead_units import DeadUnits
from evonnx.passes.directed_evolution import DirectedEvolution
from evonnx.passes.engine.calib import load_npz, synthetic
from evonnx.passes.engine.metrics import compare
from evonnx.passes.pipeline import Pipeline
from evonnx.passes.quant.apply import Fidelity
from evonnx.passes.sparsity.checkpoint import fingerprint
from evonnx.passes.state import ModelState, load_state
from evonnx.runtime.decode import build_model
from evonnx.runtime.weights import read_weights

RUN_FILE = "run.json"
AUTO_DIR = "auto"
LADDER = tuple(1 - 0.5 ** k for k in range(1, 7))  # 0.5 … 0.984: the kept fraction halves each rung
BISECTIONS = 2
SEARCH_SHARE = 0.7  # of --time-limit for the sparsity search; the rest is left for the bit allocation
AUTO_SHARE = 0.5  # of --max-drop the auto sparsity may spend; the bit allocation gets what is left
LIGHT_BITS = {"schemes": ["uniform/channel/sym"], "bits": [2, 3, 4, 5, 6, 8]}  # the bit allocation when time is short
FINISH_FORWARDS = 4  # passes over the calibration set after the search: final metrics, decode, verify
ENCODE_SECONDS_PER_PARAM = 1e-6  # entropy coding and decoding the container (~1 s per million weights here)
MIN_SEARCH_SHARE = 0.1  # of --time-limit the passes get however little is left
JOINT_EVALUATIONS = 40  # about what the bit allocation's joint search measures
INTERNAL = ("history", "search_log")  # CompressResult fields for reports, not the JSON summary


@dataclass
class CompressResult:
    """What `compress` did: sizes, fidelity against the teacher, per-layer rows, what it left alone and why."""

    output: str
    original_bytes: int
    container_bytes: int
    ratio: float
    sparsity: float
    provider: str
    seconds: float
    teacher_accuracy: float | None
    accuracy: float | None
    top1_agreement: float | None
    fitness: float
    max_output_diff: float
    layers: list[dict] = field(default_factory=list)
    skipped: list[dict] = field(default_factory=list)  # tensors left untouched (already quantized, ...) and why
    kept_exact: list[str] = field(default_factory=list)  # targets the calibration data never exercises
    notes: list[str] = field(default_factory=list)
    auto: list[dict] = field(default_factory=list)  # the trials of sparsity="auto"
    history: list[dict] = field(default_factory=list, repr=False)  # the passes' records
    search_log: list[dict] = field(default_factory=list, repr=False)  # Directed Evolution's log.jsonl entries

    def as_dict(self) -> dict:
        """The summary (JSON-ready), without the passes' records and search logs."""
        return {f.name: _jsonable(getattr(self, f.name)) for f in dataclasses.fields(self) if f.name not in INTERNAL}


@dataclass
class Budget:
    """Settings that fit a time limit, from the measured time of one forward pass over the calibration set.

    Directed Evolution's sensitivity curves (one evaluation a target per level, plus re-fits) are not
    bounded by its time limit: when they would take over a quarter of it, a global target is split by
    LAMP scores (no data) and survivors are not re-fitted. The bit allocation measures every scheme x bit width per
    target, then searches jointly: when the time left after the sparsity search cannot pay for that, it
    tries uniform per-channel 2-8 bits only, and when not even that, every target gets 8 bits.
    """

    de: dict = field(default_factory=dict)
    bits: dict | None = field(default_factory=dict)  # None: fixed 8 bits instead of the bit allocation

    @classmethod
    def fit(cls, targets: int, forward_seconds: float, time_limit: float) -> "Budget":
        from evonnx.passes.bit_allocation import BitAllocation
        from evonnx.passes.sparsity.common import LEVELS

        budget = cls()
        if targets * len(LEVELS) * forward_seconds > 0.25 * SEARCH_SHARE * time_limit:
            budget.de = {"allocation": "lamp", "refit": False}
        defaults = BitAllocation.Config()
        full, light = len(defaults.schemes) * len(defaults.bits) + 1, len(LIGHT_BITS["bits"]) + 1
        affordable = (1 - SEARCH_SHARE) * time_limit / max(forward_seconds, 1e-9)
        if affordable < targets * full + JOINT_EVALUATIONS:
            budget.bits = dict(LIGHT_BITS) if affordable >= targets * light + JOINT_EVALUATIONS else None
        return budget

    def describe(self) -> str:
        parts = [f"{k}={v}" for k, v in self.de.items()]
        if self.bits is None:
            parts.append("every target at 8 bits (no time for the bit allocation)")
        elif self.bits:
            parts.append("bit allocation over " + ", ".join(f"{k}={v}" for k, v in self.bits.items()))
        return ", ".join(parts)


def default_pipeline(sparsity: float | str, bits: int | str, max_drop: float, time_limit: float | None, *,
                     prune: list[str] | None = None, keep: list[str] = (), budget: Budget | None = None,
                     target_bytes: int = 0) -> Pipeline:
    """Directed Evolution to the sparsity target, dead units cleared, then the bit allocation (or fixed bits).
    `prune` restricts pruning to those weights (None: all targets); `keep` stays exact; `budget` fits a time
    limit; `target_bytes` > 0 makes the bit allocation fit that size instead of `max_drop`."""
    budget = budget or Budget()
    steps: list = []
    if sparsity not in (0, 0.0, "0") and prune != []:
        de: dict = {"sparsity": float(sparsity)}
        if prune is not None and keep:
            de["weights"] = list(prune)
        if time_limit:  # the search stops early, then reaches the target the cheap way
            de.update(time_limit=float(time_limit) * SEARCH_SHARE, on_budget="finish", **budget.de)
        steps.append(("directed-evolution", de))
        steps.append(("dead-units", {}))
    if bits == "auto" and (budget.bits is not None or target_bytes):
        steps.append(("bit-allocation", {"max_drop": float(max_drop), **({"keep": list(keep)} if keep else {}),
                                         **(budget.bits or {}), **({"target_bytes": target_bytes} if target_bytes
                                                                   else {})}))
    else:
        steps.append(("quantize", {"bits": 8 if bits == "auto" else int(bits),
                                   **({"layers": {n: "raw" for n in keep}} if keep else {}),
                                   **({"measure_alone": False} if time_limit else {})}))
    return Pipeline(steps)


def to_container(state: ModelState) -> tuple[onnx.ModelProto, list[QuantizedTensor], dict[str, np.ndarray]]:
    """The graph without its float weights, one record per float weight, and the weights they stand for."""
    records, expected = [], {}
    for info in state.table:
        if info.name in state.quant:
            record = state.quant[info.name]
        else:
            record = QuantizedTensor.raw(info.name, state.current(info.name), state.masks.get(info.name))
        records.append(record)
        expected[info.name] = state.current(info.name)
    graph = onnx.ModelProto()
    graph.CopyFrom(state.model)
    kept = [t for t in graph.graph.initializer if t.name not in expected]
    del graph.graph.initializer[:]
    graph.graph.initializer.extend(kept)
    return graph, records, expected


def compress(model: str | Path, output: str | Path, *, calib: str | Path | None = None,
             input_shapes: dict[str, list[int]] | None = None, batch_axes: dict[str, int | None] | None = None,
             samples: int = 256,
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
    _check_options(time_limit, max_drop, samples)
    output = Path(output)
    if not output.parent.exists():
        raise EvonnxError(f"{output}: folder {output.parent} does not exist")
    if resume and workdir is None:
        raise EvonnxError("resuming needs the work dir of the run (--workdir)")
    if sparsity == "auto" and pipeline is not None:
        raise EvonnxError("--sparsity auto drives the default pipeline; it cannot be combined with --config")
    original = _source_bytes(model)
    limit_bytes = _max_bytes(max_bytes, original, sparsity, bits, pipeline)
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
    with _work_dir(workdir, report) as wd:
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
            _claim(wd, fingerprint(state.model, {**data.inputs, **labels}, settings, seed), resume, state.label, log)
        prune = [n for n in targets if n not in kept]
        budget = Budget()
        search_limit = time_limit
        if time_limit and targets and pipeline is None:
            forward = _forward_seconds(engine)
            search_limit = _search_seconds(time_limit, time.perf_counter() - start, forward, state, log)
            budget = Budget.fit(len(prune), forward, search_limit)
            if budget.describe():
                log(f"time limit {time_limit:g} s ({search_limit:.0f} s to search): {budget.describe()}")
        if not targets:
            notes.append("nothing to compress: no conv kernel, matrix or embedding among the float weights; "
                         "the container holds the model as it is")
            log(notes[-1])
            steps: list[dict] = []
        elif sparsity == "auto":
            state, steps, trials = _auto(state, ctx, engine, bits, max_drop, search_limit, prune, kept, budget, log)
        elif limit_bytes:
            pipeline = pipeline or default_pipeline(sparsity, bits, max_drop, search_limit, prune=prune, keep=kept,
                                                    budget=budget, target_bytes=limit_bytes)
            state, pipeline = _fit_file_size(state, ctx, pipeline, limit_bytes,
                                             lambda p: run_meta(Path(str(model)).name, seed, describe(p)), log)
            steps = describe(pipeline)
        else:
            pipeline = pipeline or default_pipeline(sparsity, bits, max_drop, search_limit, prune=prune, keep=kept,
                                                    budget=budget)
            state = pipeline.run(state, ctx)
            steps = describe(pipeline)
        search_log = _read_logs(wd) if wd is not None else []
    meta = run_meta(Path(str(model)).name, seed, steps, trials)
    blob, records, measured, diff = _encode_and_verify(state, engine, meta)
    atomic_write_bytes(output, blob)
    if workdir is not None:
        _finish_run(Path(workdir))

    metrics = compare(engine.output_names, engine.teacher, measured, engine.calib.labels)
    result = CompressResult(
        output=str(output), original_bytes=original, container_bytes=len(blob), ratio=original / len(blob),
        sparsity=state.global_sparsity() if targets else 0.0, provider=engine.provider,
        seconds=time.perf_counter() - start, teacher_accuracy=engine.teacher_metrics().accuracy,
        accuracy=metrics.accuracy, top1_agreement=metrics.top1, fitness=metrics.fitness, max_output_diff=diff,
        layers=_layers(state, records), skipped=skipped, kept_exact=kept, notes=notes, auto=trials,
        history=state.history, search_log=search_log)
    if report is not None:
        from evonnx.tools.report import write_report
        for line in write_report(result, report):
            log(line)
    return result


# -- the run's pieces ----------------------------------------------------------------------------------

def _encode_and_verify(state: ModelState, engine, meta: dict) -> tuple[bytes, list, list[np.ndarray], float]:
    """The container's bytes, after checking that they decode to the searched weights and outputs; also
    its records, the measured outputs (for the final metrics) and the largest output difference."""
    graph, records, expected = to_container(state)
    blob = encode_evx(graph, records, meta)
    decoded = build_model(read_evx(blob))
    _check_weights(decoded, expected)
    measured = engine.outputs({n: state.current(n) for n in engine.weight_names})
    shipped = engine.model_outputs(decoded, "decoded")
    diff = max((float(np.max(np.abs(a.astype(np.float64) - b))) if a.size else 0.0
                for a, b in zip(measured, shipped)), default=0.0)
    scale = max((float(np.max(np.abs(m))) if m.size else 0.0 for m in measured), default=0.0) or 1.0
    if diff > 1e-4 * scale:
        raise EvonnxError(f"verification failed: the decoded model's outputs differ from the measured ones by {diff:g}")
    return blob, records, measured, diff


def _unexercised(state: ModelState, engine) -> list[str]:
    """Targets read only inside subgraphs (If/Loop/Scan bodies) whose zeroing changes no output on the
    calibration data: a branch the data never takes, so no fidelity can be measured for them."""
    inner = [w.name for w in state.table.targets if w.consumers and all(c.graph for c in w.consumers)]
    if not inner:
        return []
    base = engine.outputs({})
    return [n for n in inner if all(np.array_equal(a, b) for a, b in
                                    zip(base, engine.outputs({n: np.zeros_like(state.original(n))})))]


def _auto(state: ModelState, ctx: PassContext, engine, bits: int | str, max_drop: float, time_limit: float | None,
          prune: list[str], kept: list[str], budget: Budget, log) -> tuple[ModelState, list[dict], list[dict]]:
    """sparsity="auto" (see the module docstring): the ladder and bisection of Directed Evolution runs,
    then the bit stage with the rest of the budget. Returns the state, the passes that made it, the trials."""
    limit = AUTO_SHARE * max_drop
    fidelity = Fidelity(engine, {n: state.current(n) for n in engine.weight_names})
    metric = ("accuracy" if ctx.calib.labels is not None else "agreement" if fidelity.start.top1 is not None
              else "cosine")
    loss = _loss(metric, 1.0)
    deadline = time.perf_counter() + SEARCH_SHARE * time_limit if time_limit else None
    best, best_drop, passed, failed, bisected = state, 0.0, 0.0, None, 0
    steps, trials = [], []
    while (nxt := _next_sparsity(passed, failed, bisected)) is not None:
        target, left = nxt
        params: dict = {"sparsity": target, **({"weights": prune} if kept else {})}
        if deadline is not None:
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                break
            params.update(time_limit=round(remaining / left, 3), on_budget="finish", **budget.de)
        de = DirectedEvolution(**params)
        sub = ctx.workdir / AUTO_DIR / f"{len(trials):02d}-{target:.4f}" if ctx.workdir else None
        student = de.run(best, dataclasses.replace(ctx, workdir=sub))
        drop = float(loss(fidelity.evaluate([{n: student.current(n) for n in engine.weight_names}])[0]))
        ok = drop <= limit
        trials.append({"sparsity": target, "reached": round(student.global_sparsity(), 4), "drop": round(drop, 4),
                       "limit": limit, "kept": ok})
        log(f"auto sparsity {target:.4f}: {metric} drop {drop:.3f} points, "
            + (f"within {limit:g}" if ok else f"beyond {limit:g}: rejected"))
        bisected += failed is not None
        if ok:
            best, best_drop, passed = student, drop, target
            steps.append(_step(de))
        else:
            failed = target
    left_over = max(max_drop - best_drop, 0.0)
    log(f"auto sparsity: kept {passed:.4f} (drop {best_drop:.3f} of {limit:g}); the bit stage gets {left_over:.3f}")
    rest = Pipeline([DeadUnits(), *default_pipeline(0, bits, left_over, None, keep=kept, budget=budget).passes])
    return rest.run(best, ctx), steps + describe(rest), trials


def _max_bytes(value: int | str | None, original: int, sparsity, bits, pipeline) -> int:
    """`max_bytes` as a byte count (0: no size bound); "Rx" is the model file's size / R."""
    if value is None:
        return 0
    text = str(value).strip()
    try:
        out = int(original / float(text[:-1])) if text.lower().endswith("x") else int(text)
    except (ValueError, ZeroDivisionError):
        raise EvonnxError(f"--max-bytes must be a byte count or a ratio like 100x, not {value!r}") from None
    if out <= 0:
        raise EvonnxError(f"--max-bytes must be positive, not {value!r}")
    if sparsity == "auto" or (pipeline is None and bits != "auto"):
        raise EvonnxError("--max-bytes sizes the bit allocation: it needs --bits auto and a numeric --sparsity, "
                          "or a --config with one bit-allocation pass")
    return out


def _fit_file_size(state: ModelState, ctx: PassContext, pipeline: Pipeline, max_bytes: int, meta_of,
                   log) -> tuple[ModelState, Pipeline]:
    """Run `pipeline` with its one bit-allocation fitted to `max_bytes`: its size target leaves room for the
    file's other bytes (graph, metadata, section table), and it runs again with less when the
    encoded file is still too large. Passes after it must not change the size (a fine-tune on the grid)."""
    from evonnx.formats.container import SECTION
    from evonnx.passes.bit_allocation import BitAllocation

    at = [i for i, p in enumerate(pipeline.passes) if p.name == BitAllocation.name]
    if len(at) != 1:
        raise EvonnxError(f"--max-bytes needs exactly one bit-allocation pass in the pipeline, found {len(at)}")
    i = at[0]
    state = pipeline.run(state, ctx, stop=i)
    graph, records, _ = to_container(state)
    framing = len(records) * SECTION.size  # a table entry each
    overhead = len(encode_evx(graph, [], meta_of(pipeline))) + framing
    target = max_bytes - overhead
    for attempt in range(4):
        if target <= 0:
            raise EvonnxError(f"--max-bytes {max_bytes}: the graph, metadata and record framing alone take about "
                              f"{overhead} bytes")
        step = BitAllocation(**{**dataclasses.asdict(pipeline.passes[i].config), "target_bytes": target})
        fitted = Pipeline([*pipeline.passes[:i], step, *pipeline.passes[i + 1:]])
        out = fitted.run(state, ctx, start=i, stop=i + 1)
        size = len(encode_evx(*to_container(out)[:2], meta_of(fitted)))
        if size <= max_bytes:
            log(f"max bytes {max_bytes}: the file takes {size} (weights target {target})")
            break
        log(f"max bytes {max_bytes}: {size} bytes with a weights target of {target}; trying again with less")
        target -= max(size - max_bytes, target // 100) << attempt  # the allocation moves in steps
    else:
        raise EvonnxError(f"--max-bytes {max_bytes}: the bit allocation's size estimate stayed above the limit "
                          f"({size} bytes); allow a little more")
    out = fitted.run(out, ctx, start=i + 1)
    size = len(encode_evx(*to_container(out)[:2], meta_of(fitted)))
    if size > max_bytes:
        raise EvonnxError(f"--max-bytes {max_bytes}: the passes after the bit allocation grew the file to {size} "
                          "bytes")
    return out, fitted


def _next_sparsity(passed: float, failed: float | None, bisected: int) -> tuple[float, int] | None:
    """The next global sparsity to try and how many trials are left at most (for splitting the time)."""
    if failed is None:
        rungs = [s for s in LADDER if s > passed + 1e-6]
        return (rungs[0], len(rungs) + BISECTIONS) if rungs else None
    if bisected >= BISECTIONS:
        return None
    return round(1 - float(np.sqrt((1 - passed) * (1 - failed))), 4), BISECTIONS - bisected


# -- work dir ------------------------------------------------------------------------------------------

@contextlib.contextmanager
def _work_dir(workdir: str | Path | None, report: str | Path | None) -> Iterator[Path | None]:
    """The given work dir; a temporary one when only a report needs the search logs; else none."""
    if workdir is not None:
        path = Path(workdir)
        path.mkdir(parents=True, exist_ok=True)
        yield path
    elif report is not None:
        with tempfile.TemporaryDirectory(prefix="evonnx-") as tmp:
            yield Path(tmp)
    else:
        yield None


def _claim(wd: Path, fp: str, resume: bool, source: str, log) -> None:
    """Refuse what would mix two runs in one work dir; start fresh or continue (see the module docstring)."""
    run_file = wd / RUN_FILE
    try:
        previous = json.loads(run_file.read_text()) if run_file.is_file() else None
    except (OSError, ValueError):
        previous = {"fingerprint": None, "source": "?", "finished": False}
    if resume:
        if previous is None:
            raise EvonnxError(f"{wd}: no run to resume ({RUN_FILE} is missing); start it without --resume")
        if previous.get("fingerprint") != fp:
            raise EvonnxError(f"{wd}: holds a run of another model, calibration set or settings "
                              f"({previous.get('source')}); --resume needs the same command line")
        log(f"resuming the run in {wd}")
        return
    if previous is not None and not previous.get("finished"):
        raise EvonnxError(f"{wd}: holds an unfinished run ({previous.get('source')}); add --resume to continue it, "
                          "or remove the folder or use another --workdir to start over")
    for sub in wd.iterdir():  # what an earlier finished run left: the passes' folders
        if sub.is_dir() and (sub.name == AUTO_DIR or (sub / "checkpoint.npz").exists() or (sub / "log.jsonl").exists()):
            shutil.rmtree(sub)
    atomic_write_bytes(run_file, json.dumps({"fingerprint": fp, "source": source, "finished": False}).encode())


def _finish_run(wd: Path) -> None:
    run = json.loads((wd / RUN_FILE).read_text())
    atomic_write_bytes(wd / RUN_FILE, json.dumps({**run, "finished": True}).encode())


def _read_logs(wd: Path) -> list[dict]:
    """Directed Evolution's log.jsonl entries, each tagged with its run (the folder below the work dir)."""
    entries = []
    for path in sorted(wd.rglob("log.jsonl")):
        run = str(path.parent.relative_to(wd))
        for line in path.read_text().splitlines():
            with contextlib.suppress(ValueError):
                entries.append({"run": run, **json.loads(line)})
    return entries


# -- small helpers -------------------------------------------------------------------------------------

def _forward_seconds(engine) -> float:
    """Seconds of one evaluation over the calibration set (the better of two runs: the first warms up)."""
    times = []
    for _ in range(2):
        start = time.perf_counter()
        engine.outputs({})
        times.append(time.perf_counter() - start)
    return min(times)


def _check_options(time_limit: float | None, max_drop: float, samples: int) -> None:
    """Refuse options out of range before any work (a negative time limit or budget means nothing)."""
    if time_limit is not None and not (math.isfinite(time_limit) and time_limit > 0):
        raise EvonnxError(f"--time-limit must be a positive number of seconds, not {time_limit:g}")
    if not (math.isfinite(max_drop) and max_drop >= 0):
        raise EvonnxError(f"--max-drop must be a number of points >= 0, not {max_drop:g}")
    if samples < 1:
        raise EvonnxError(f"--samples must be at least 1, not {samples}")


def _search_seconds(time_limit: float, spent: float, forward: float, state: ModelState, log) -> float:
    """What is left of `time_limit` for the passes: less what loading took, and a reserve for decoding and
    verifying the container (FINISH_FORWARDS passes over the calibration set, encoding by the parameter)."""
    params = sum(w.size for w in state.table.targets)
    reserve = FINISH_FORWARDS * forward + ENCODE_SECONDS_PER_PARAM * params
    left = time_limit - spent - reserve
    floor = MIN_SEARCH_SHARE * time_limit
    if left < floor:
        log(f"time limit {time_limit:g} s: loading took {spent:.0f} s and verifying needs about {reserve:.0f} s; "
            f"searching for {floor:.0f} s, so the run will take longer")
    return max(left, floor)


def _source_bytes(model: str | Path | bytes) -> int:
    """Bytes the model takes on disk: the .onnx file plus the external data files it names."""
    if isinstance(model, (bytes, bytearray)):
        return len(model)
    path = Path(model)
    if not path.is_file():
        return 0  # load_state reports the missing file
    total = path.stat().st_size
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception:  # noqa: BLE001 - load_state reports unreadable models
        return total
    locations = {entry.value for t in onnx.external_data_helper._get_all_tensors(proto)
                 for entry in t.external_data if entry.key == "location"}
    return total + sum((path.parent / loc).stat().st_size for loc in locations if (path.parent / loc).is_file())


def describe(pipeline: Pipeline, full: bool = False) -> list[dict]:
    """Each pass with the settings that differ from its defaults, as the container's metadata records it
    (the manifest's `producer` names the version whose defaults the rest are); `full`: every setting."""
    return [_step(p, full) for p in pipeline.passes]


def _step(p: Pass, full: bool = False) -> dict:
    settings = _jsonable(dataclasses.asdict(p.config))
    if not full:
        defaults = _jsonable(dataclasses.asdict(type(p.config)()))
        settings = {k: v for k, v in settings.items() if v != defaults[k]}
    return {"name": p.name, **settings}


def run_meta(source: str, seed: int, steps: list[dict], trials: list | None = None) -> dict:
    """The metadata a compressed file carries (deterministic: runs compare by bytes)."""
    return {"source": source, "seed": seed, "pipeline": steps, **({"auto": trials} if trials else {})}


def _check_weights(decoded: onnx.ModelProto, expected: dict[str, np.ndarray]) -> None:
    got = read_weights(decoded, list(expected))
    for name, want in expected.items():
        have = got[name]
        if have.shape != want.shape or have.tobytes() != np.ascontiguousarray(want, dtype=have.dtype).tobytes():
            raise EvonnxError(f"verification failed: decoded weight {name!r} differs from the searched one")


def _layers(state: ModelState, records: list[QuantizedTensor]) -> list[dict]:
    rows = []
    for r in records:
        info = state.table[r.name]
        rows.append({"name": r.name, "role": info.role, "shape": list(r.shape), "sparsity": round(r.sparsity, 4),
                     "scheme": r.scheme, "bits": r.bits})
    return rows


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist() if value.size <= 64 else f"<array {value.shape}>"
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)

"""evonnx on the real-model corpus, beside ONNX Runtime's dynamic int8 and zstd, in one run.

    python -m evonnx.tools.bench.corpus [--models NAME ...] [--runs default s50b8 fixed90] [--time-limit 120]
                                        [--samples N] [--out FILE.md]

For every model: `evonnx compress` (a child process, so its wall time and peak RSS are its own) with the
corpus calibration set, each run of `--runs` (`default`: the budget-driven defaults; `s50b8`: --sparsity 0.5 --bits 8;
`fixed90`: --sparsity 0.9, the former default; both fixed recipes with --max-drop inf), each with the model's --metric; the container decoded to fp32 (and, for the first run, fp16 and qdq) and run in
ONNX Runtime on held-out inputs (the same builder, another seed); fidelity is the drop in the task metric
(passes/engine/tasks.py) and the smallest per-output cosine against the original. Ratios are against the model's files (external data
included). Beside them: `quantize_dynamic` (int8) and zstd -19 of the file.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import zstandard

from evonnx.passes.state import load_state
from evonnx.runtime import decode
from evonnx.tools.bench import emit
from evonnx.tools.corpus.fidelity import Reference
from evonnx.tools.corpus.models import BY_NAME, MODELS, CorpusModel
from evonnx.tools.interrupt import run_child

RUNS = {"default": [],  # budget-driven: --max-drop 0.5 in the model's metric, checked on held-out samples
        "s50b8": ["--sparsity", "0.5", "--bits", "8", "--max-drop", "inf"],  # fixed recipes, drop reported only
        "fixed90": ["--sparsity", "0.9", "--max-drop", "inf"]}
HELD_OUT_SEED = 1


def model_files(path: Path) -> list[Path]:
    """The model file and its external data files."""
    model = onnx.load(str(path), load_external_data=False)
    locations = sorted({e.value for t in model.graph.initializer for e in t.external_data if e.key == "location"})
    return [path, *(path.parent / loc for loc in locations)]


def model_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in model_files(path))


def session(model_or_path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.add_session_config_entry("session.qdq_matmulnbits_accuracy_level", "1")
    source = model_or_path.SerializeToString() if isinstance(model_or_path, onnx.ModelProto) else str(model_or_path)
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def compress_child(entry: CorpusModel, out: Path, args: list[str], calib: Path, time_limit: float) -> dict:
    """One `evonnx compress` in a child process: its summary, wall seconds, peak RSS (MiB) and exit status."""
    cmd = [sys.executable, "-m", "evonnx", "compress", str(entry.path()), "-o", str(out), "--calib", str(calib),
           "--time-limit", str(time_limit), "--json", "--quiet", *args]
    res = run_child(cmd)
    out = {"rc": res["rc"], "wall": res["wall"], "rss": res["rss"] / 2**20}
    return {**out, "error": res["error"] or "?"} if res["rc"] != 0 else {**out, "summary": json.loads(res["stdout"])}


def ort_int8(entry: CorpusModel, reference: Reference, original: int) -> dict:
    from onnxruntime.quantization import QuantType, quantize_dynamic
    for name in ("", "onnxruntime.quantization"):
        logging.getLogger(name).setLevel(logging.ERROR)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "int8.onnx"
        try:
            quantize_dynamic(str(entry.path()), str(out), weight_type=QuantType.QInt8)
            fid = reference.measure(session(out))
        except Exception as exc:  # noqa: BLE001 - the failure is the result
            return {"error": str(exc).strip().splitlines()[0][:80]}
        return {"ratio": original / out.stat().st_size, **fid}


def bench_model(entry: CorpusModel, runs: list[str], time_limit: float, samples: int | None, folder: Path) -> list[dict]:
    path, calib = entry.path(), entry.calib_path(samples)
    reference = Reference(path, entry.calib_path(samples, seed=HELD_OUT_SEED), entry.metric)
    original = model_bytes(path)
    params = sum(w.size for w in load_state(str(path)).table)  # float weights wherever they live
    base = {"model": entry.name, "family": entry.family, "task": entry.task, "file_mb": original / 1e6,
            "calib": len(next(iter(dict(np.load(calib)).values()))), "params": params}
    rows = []
    for i, run in enumerate(runs):
        out = folder / f"{entry.name}-{run}.evx"
        res = compress_child(entry, out, [*RUNS[run], "--metric", entry.metric], calib, time_limit)
        row = {**base, "run": run, "wall": res["wall"], "limit": time_limit, "rss": res["rss"], "rc": res["rc"]}
        if res["rc"] != 0:
            rows.append({**row, "error": res["error"]})
            continue
        s = res["summary"]
        row.update(ratio=original / out.stat().st_size, bytes=out.stat().st_size, provider=s["provider"],
                   sparsity=s["sparsity"], held_out=s["held_out"], max_drop=s["max_drop"], shipped=s["shipped"])
        for fmt in ("fp32", "fp16", "qdq") if i == 0 else ("fp32",):
            try:
                row[fmt] = reference.measure(session(decode(out, fmt)))
            except Exception as exc:  # noqa: BLE001 - a decode form that does not run is a result too
                row[fmt] = {"error": str(exc).strip().splitlines()[0][:80]}
        rows.append(row)
    rows.append({**base, "run": "ort-int8", **ort_int8(entry, reference, original)})
    whole = b"".join(p.read_bytes() for p in model_files(path))
    rows.append({**base, "run": "zstd-19", "ratio": original / len(zstandard.ZstdCompressor(level=19).compress(whole))})
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| model | family | params | MB | run | ratio | task metric | drop (points) | min cos | fp16 / qdq cos | "
             "wall s / limit | peak RSS MiB | provider |", "|---|---|---:|---:|---|---:|---|---:|---:|---|---:|---:|---|"]
    for r in rows:
        head = f"| {r['model']} | {r['family']} | {r['params'] / 1e6:.2f}M | {r['file_mb']:.1f} | {r['run']} |"
        if "error" in r:
            lines.append(f"{head} fails: {r['error']} | | | | | " + (f"{r['wall']:.0f} / {r['limit']:.0f} |" if "wall" in r else "|") + " | |")
            continue
        fp = r.get("fp32", r)
        if "error" in fp:
            lines.append(f"{head} {r['ratio']:.1f}× | decode fails: {fp['error']} | | | | | | |")
            continue
        others = " / ".join(f"{r[f]['cos']:.4f}" if "cos" in r.get(f, {}) else "fails" for f in ("fp16", "qdq") if f in r)
        timing = f"{r['wall']:.0f} / {r['limit']:.0f}" if "wall" in r else "–"
        rss = f"{r['rss']:.0f}" if "rss" in r else "–"
        task = f"{fp['drop']:.3g}" if "drop" in fp else "–"
        cos = f"{fp['cos']:.4f}" if "cos" in fp else "–"
        lines.append(f"{head} {r['ratio']:.1f}× | {fp.get('metric', '–')} | {task} | {cos} | {others or '–'} | "
                     f"{timing} | {rss} | {r.get('provider', '–')} |")
    return "\n".join(lines)


def model_table(rows: list[dict]) -> str:
    """One row a model: evonnx's runs as ratio / task metric / min cosine (wall s of the limit), ORT int8, zstd."""
    runs = [r for r in RUNS if any(x["run"] == r for x in rows)]
    head = ["model", "family", "params", "MB", *[f"evonnx {r}" for r in runs], "ORT int8", "zstd -19", "peak RSS MiB"]
    lines = ["| " + " | ".join(head) + " |", "|---|---|---:|---:|" + "---|" * (len(runs) + 2) + "---:|"]
    for name in dict.fromkeys(r["model"] for r in rows):
        mine = {r["run"]: r for r in rows if r["model"] == name}
        first = next(iter(mine.values()))
        cells = [_cell(mine.get(run), timed=True) for run in runs]
        zstd = mine.get("zstd-19")
        rss = max((r.get("rss", 0) for r in mine.values()), default=0)
        lines.append(f"| {name} | {first['family']} | {first['params'] / 1e6:.2f}M | {first['file_mb']:.1f} | "
                     + " | ".join(cells) + f" | {_cell(mine.get('ort-int8'))} | "
                     + (f"{zstd['ratio']:.1f}×" if zstd else "–") + f" | {rss:.0f} |")
    return "\n".join(lines)


def _cell(r: dict | None, timed: bool = False) -> str:
    if r is None:
        return "–"
    if "error" in r:
        return f"fails: {r['error'][:60]}"
    fp = r.get("fp32", r)
    if "error" in fp:
        return f"{r['ratio']:.1f}×, decode fails"
    text = f"{r['ratio']:.1f}× / {fp['drop']:.3g} / {fp['cos']:.4f}"
    return text + (f" ({r['wall']:.0f} s)" if timed and "wall" in r else "")


def headline(rows: list[dict], run: str) -> str:
    """How many models work end to end, and the geometric-mean ratio of those at min cosine >= 0.99."""
    mine = [r for r in rows if r["run"] == run]
    ok = [r for r in mine if "error" not in r and "error" not in r.get("fp32", r)]
    good = [r["ratio"] for r in ok if r.get("fp32", r).get("cos", 0) >= 0.99]
    within = sum(1 for r in ok if r.get("fp32", r).get("drop", np.inf) <= 0.5)
    gm = float(np.exp(np.mean(np.log(good)))) if good else float("nan")
    return (f"{run}: {len(ok)}/{len(mine)} models end to end; {within} within 0.5 points of their task metric on "
            f"held-out inputs; {len(good)} at min cosine >= 0.99, geometric mean {gm:.2f}×")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m evonnx.tools.bench.corpus", description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=[m.name for m in MODELS], choices=list(BY_NAME))
    p.add_argument("--runs", nargs="+", default=list(RUNS), choices=list(RUNS))
    p.add_argument("--time-limit", type=float, default=120.0)
    p.add_argument("--samples", type=int, default=None, help="calibration samples (default: each model's own)")
    p.add_argument("--jsonl", help="append every row as JSON to this file as it is measured")
    p.add_argument("--from-jsonl", metavar="FILE", help="render the tables of an earlier --jsonl, running nothing")
    p.add_argument("--out")
    args = p.parse_args(argv)
    rows = []
    if args.from_jsonl:
        rows = [json.loads(line) for line in Path(args.from_jsonl).read_text().splitlines() if line.strip()]
        args.runs = [r for r in RUNS if any(x["run"] == r for x in rows)]
    with tempfile.TemporaryDirectory() as tmp:
        for name in [] if args.from_jsonl else args.models:
            new = bench_model(BY_NAME[name], args.runs, args.time_limit, args.samples, Path(tmp))
            rows += new
            if args.jsonl:
                with open(args.jsonl, "a") as f:
                    f.writelines(json.dumps(r, default=float) + "\n" for r in new)
            print("\n".join(table(new).splitlines()[2:]), flush=True)
    lines = [f"machine: {platform.machine()}, {os.cpu_count()} cores; onnxruntime {ort.__version__}", "",
             *[headline(rows, run) for run in [*args.runs, "ort-int8"]], "",
             "Cells: ratio / task metric drop in points / lowest output's mean cosine (wall seconds), on held-out "
             "inputs; the metric of each model is named in the second table.", "",
             model_table(rows), "", table(rows)]
    return emit("\n".join(lines), args.out)


if __name__ == "__main__":
    from evonnx.tools.interrupt import entry_point
    raise SystemExit(entry_point(main))

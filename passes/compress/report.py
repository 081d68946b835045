"""`evonnx compress --report DIR`: report.md (summary, per-layer table, search records), summary.json and PNG
plots (per-layer sparsity and bits, Directed Evolution's fitness over generations, the size–fidelity
candidates of the bit allocation, the auto-sparsity trials). matplotlib is optional: without it the
markdown is written and the plots are skipped."""
from __future__ import annotations

import io
import json
from pathlib import Path

from evonnx.formats.atomic import atomic_write_bytes
from evonnx.runtime.weights import TARGET_ROLES


def write_report(result, folder: str | Path) -> list[str]:
    """Write the report of a CompressResult into `folder` (created); return what was written, as log lines."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    summary = result.as_dict()
    atomic_write_bytes(folder / "summary.json", json.dumps(summary, indent=2).encode())
    try:
        plots, skipped = _plots(result, folder), None
    except ImportError:
        plots, skipped = [], "plots skipped: matplotlib is not installed (pip install 'evonnx[report]')"
    atomic_write_bytes(folder / "report.md", markdown(result, plots, skipped).encode())
    return [f"report: {folder / 'report.md'}, summary.json" + (f" and {len(plots)} plots" if plots else "")] + \
        ([skipped] if skipped else [])


def fidelity_lines(s: dict) -> list[tuple[str, str]]:
    """(what, figure) lines of a compress summary's budget: the metric and budget, the held-out drop (the
    one the budget is checked on), the calibration drop (fitted to: optimistic), and any fallback."""
    def drop(d: dict) -> str:
        spread = f" ± {d['ci95']:.3g}" if d.get("se") else ""
        return f"{d['points']:.3g}{spread} points (95 % bound {d['upper']:.3g}, n={d['n']})"

    budget = "reported only" if s.get("max_drop") is None else f"<= {s['max_drop']:g} points at the 95 % bound"
    lines = [("fidelity budget", f"{s['metric']} drop {budget}")]
    if s.get("held_out"):
        lines.append((f"drop on {s['held_out']['data']}", drop(s["held_out"])))
    if s.get("calibration"):
        lines.append((f"drop on {s['calibration']['data']} (optimistic)", drop(s["calibration"])))
    if s.get("rejected"):
        lines.append(("shipped", f"{s['shipped']}; beyond the budget: "
                      + ", ".join(f"{r['result']} ({r['upper']:.3g})" for r in s["rejected"])))
    return lines


def markdown(result, plots: list[str], skipped: str | None) -> str:
    s = result.as_dict()
    pct = lambda v: "-" if v is None else f"{100 * v:.2f} %"  # noqa: E731
    est = _estimated_bytes(result.history)
    lines = [f"# evonnx compress: {Path(s['output']).name}", "", "| | |", "|---|---|",
             f"| container | {s['output']} ({s['container_bytes']:,} bytes) |",
             f"| original | {s['original_bytes']:,} bytes |", f"| ratio | {s['ratio']:.2f}x |",
             f"| sparsity of the target weights | {pct(s['sparsity'])} |",
             *[f"| {k} | {v} |" for k, v in fidelity_lines(s)],
             f"| accuracy (teacher), calibration samples | {pct(s['accuracy'])} ({pct(s['teacher_accuracy'])}) |",
             f"| top-1 agreement with the teacher, calibration samples | {pct(s['top1_agreement'])} |",
             f"| fitness (KL or rel. MSE vs the teacher), calibration samples | {s['fitness']:.4g} |",
             f"| decoded and verified, max output diff | {s['max_output_diff']:.2g} |",
             f"| provider, time | {s['provider']}, {s['seconds']:.1f} s |", "", "## Layers", "",
             "| tensor | role | shape | params | sparsity | scheme | bits | est. coded bytes |",
             "|---|---|---|---:|---:|---|---:|---:|"]
    for r in s["layers"]:
        size = 1
        for d in r["shape"]:
            size *= d
        coded = est.get(r["name"])
        lines.append(f"| {r['name']} | {r['role']} | {'x'.join(map(str, r['shape'])) or 'scalar'} | {size:,} | "
                     f"{100 * r['sparsity']:.1f} % | {r['scheme']} | {r['bits']} | "
                     f"{'' if coded is None else f'{coded:,.0f}'} |")
    lines += _passes(result.history)
    if s["auto"]:
        lines += ["", "## Auto sparsity", "", "| target | reached | drop (points) | limit | kept |",
                  "|---:|---:|---:|---:|---|"]
        lines += [f"| {100 * t['sparsity']:.2f} % | {100 * t['reached']:.2f} % | {t['drop']:.3f} | {t['limit']:g} | "
                  f"{'yes' if t['kept'] else 'no'} |" for t in s["auto"]]
    notes = [f"- left untouched: `{k['name']}` ({k['reason']})" for k in s["skipped"]]
    notes += [f"- already quantized, coded losslessly: `{r['name']}` ({r['dtype']}, {r['value_codec']}) "
              f"{r['coded_bytes']:,} bytes, zstd -19 {r['zstd_bytes']:,}" for r in s["lossless"]]
    notes += [f"- kept exact: `{n}` (not exercised by the calibration data)" for n in s["kept_exact"]]
    notes += [f"- {n}" for n in s["notes"]]
    if notes:
        lines += ["", "## Notes", "", *notes]
    lines += ["", "## Plots", ""]
    lines += [f"![{Path(p).stem}]({p})" for p in plots] or [skipped or "nothing to plot"]
    return "\n".join(lines) + "\n"


def _passes(history: list[dict]) -> list[str]:
    lines = []
    for rec in history:
        if rec.get("pass") == "directed-evolution":
            lines.append(f"- directed-evolution: target {rec['settings'].get('sparsity')}, reached "
                         f"{100 * rec['sparsity']:.2f} %, stopped by {rec.get('stop_reason')}, "
                         f"{rec['evaluations']:,} evaluations, fitness {rec['fitness']:.4g}")
        elif rec.get("pass") in ("bit-allocation", "quantize"):
            line = f"- {rec['pass']}: est. {rec['est_bytes']:,.0f} coded bytes of the target weights"
            if "limit" in rec:
                line += (f", {rec['metric']} budget {rec['limit']:g}, joint loss {rec['joint_loss']:.3g}, "
                         f"{len(rec.get('tried', []))} joint candidates measured")
            lines.append(line)
    return ["", "## Passes", "", *lines] if lines else []


def _estimated_bytes(history: list[dict]) -> dict[str, float]:
    return {row["name"]: row["est_bytes"] for rec in history for row in rec.get("layers", []) if "est_bytes" in row}


# -- plots ---------------------------------------------------------------------------------------------

def _plots(result, folder: Path) -> list[str]:
    """Render the plots that have data; return their file names. Raises ImportError without matplotlib."""
    from matplotlib.figure import Figure  # the object API: no pyplot, no global backend

    written = []
    for name, draw in (("layers.png", _layers), ("fitness.png", _fitness), ("tradeoff.png", _tradeoff),
                       ("auto.png", _auto)):
        fig = Figure(figsize=(8, 4.5), layout="constrained")
        if draw(fig, result):
            buf = io.BytesIO()
            fig.savefig(buf, format="png", dpi=100)
            atomic_write_bytes(folder / name, buf.getvalue())
            written.append(name)
    return written


def _layers(fig, result) -> bool:
    rows = [r for r in result.layers if r["role"] in TARGET_ROLES]
    if not rows:
        return False
    x = range(len(rows))
    ax1, ax2 = fig.subplots(2, 1, sharex=True)
    ax1.bar(x, [100 * r["sparsity"] for r in rows], color="tab:blue")
    ax1.set_ylabel("sparsity (%)")
    ax1.set_ylim(0, 100)
    ax2.bar(x, [r["bits"] for r in rows], color="tab:orange")
    ax2.set_ylabel("bits per survivor")
    ax2.set_xlabel("target weight (graph order)")
    if len(rows) <= 24:
        ax2.set_xticks(list(x), [r["name"][-16:] for r in rows], rotation=60, ha="right", fontsize=7)
    fig.suptitle("per-layer sparsity and bits")
    return True


def _fitness(fig, result) -> bool:
    gens = [e for e in result.search_log if "generation" in e and "best" in e]
    if not gens:
        return False
    ax = fig.subplots()
    runs = list(dict.fromkeys(e["run"] for e in gens))
    start = 0
    for run in runs:
        ys = [e["best"] for e in gens if e["run"] == run]
        ax.plot(range(start, start + len(ys)), ys, lw=0.8, label=run)
        start += len(ys)
    if all(e["best"] > 0 for e in gens):
        ax.set_yscale("log")
    ax.set_xlabel("generation (all searches, in order)")
    ax.set_ylabel("best fitness vs teacher")
    if len(runs) > 1:
        ax.legend(fontsize=7)
    fig.suptitle("Directed Evolution: best candidate per generation")
    return True


def _tradeoff(fig, result) -> bool:
    rec = next((r for r in result.history if r.get("pass") == "bit-allocation" and r.get("tried")), None)
    if rec is None:
        return False
    ax = fig.subplots()
    ax.scatter([b / 1024 for b, _ in rec["tried"]], [loss for _, loss in rec["tried"]], s=14, label="candidates")
    ax.scatter([rec["chosen_bytes"] / 1024], [rec["joint_loss"]], s=60, marker="*", color="tab:red", label="chosen")
    ax.axhline(rec["limit"], color="gray", ls="--", lw=0.8, label=f"budget ({rec['metric']})")
    ax.set_xlabel("estimated coded size of the target weights (KiB)")
    ax.set_ylabel({"accuracy": "accuracy drop (points)", "agreement": "top-1 changed (points)"}.get(
        rec["metric"], "KL from the incoming model"))
    ax.legend(fontsize=8)
    fig.suptitle("bit allocation: size and fidelity of the joint candidates measured")
    return True


def _auto(fig, result) -> bool:
    if not result.auto:
        return False
    ax = fig.subplots()
    for t in result.auto:
        ax.scatter(100 * t["sparsity"], t["drop"], color="tab:green" if t["kept"] else "tab:red")
    ax.axhline(result.auto[0]["limit"], color="gray", ls="--", lw=0.8)
    ax.set_xlabel("global sparsity target (%)")
    ax.set_ylabel("drop vs the teacher (points)")
    fig.suptitle("auto sparsity: trials (green kept, red beyond the budget)")
    return True

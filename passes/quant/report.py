"""Per-layer report rows of the quantization passes as a markdown table, and metric summaries."""
from __future__ import annotations

from evonnx.passes.engine.metrics import Metrics


def metrics_summary(m: Metrics) -> dict:
    return {"fitness": m.fitness, "accuracy": m.accuracy, "top1": m.top1}


def format_rows(rows: list[dict]) -> str:
    """| weight | scheme | bits | kept | est. bytes | bits/weight | rel. error | damage alone |"""
    lines = ["| weight | scheme | bits | kept | est. bytes | bits/weight | rel. error | damage alone |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        bpw = 8 * r["est_bytes"] / max(r["size"], 1)
        delta = r.get("damage_alone")
        lines.append(f"| {r['name']} | {r['scheme']} | {r['bits']} | {r['kept']}/{r['size']} | {r['est_bytes']:.0f} "
                     f"| {bpw:.3f} | {r['rel_error']:.4f} | {'' if delta is None else f'{delta:.2e}'} |")
    return "\n".join(lines)

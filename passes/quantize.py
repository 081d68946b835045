"""quantize: code the surviving weights of every target layer with one scheme (per-layer overrides allowed).

Schemes (see passes/quant/layer.py): uniform per channel or per tensor, symmetric (mid-rise, no zero
level: zeros live in the mask) or asymmetric, 1-8 bits; codebook = 1-D k-means with linear
initialisation, optionally re-fitted to the layer output on calibration activations; raw = exact.
Each quantized weight gets `state.quant[name]` (a formats.tensor.QuantizedTensor) and
`state.weights[name] = dequantize(record)`, the very array the decoder rebuilds. Masks are kept.
"""
from __future__ import annotations

import logging
from dataclasses import asdict, dataclass

from evonnx.errors import EvonnxError
from evonnx.passes.base import Pass, PassContext, param, register
from evonnx.passes.engine.metrics import compare
from evonnx.passes.quant.apply import Fidelity, Nontarget, Quantizer, nontargets, round_nontarget, row
from evonnx.passes.quant.layer import QuantSpec, Quantized
from evonnx.passes.quant.sizing import coded_bytes
from evonnx.passes.quant.report import format_rows, metrics_summary
from evonnx.passes.state import ModelState

log = logging.getLogger(__name__)


@register
class Quantize(Pass):
    """Quantize every target weight's survivors with one scheme and bit width."""

    name = "quantize"

    @dataclass
    class Config:
        scheme: str = param("uniform/channel/sym", "uniform/{channel,tensor}/{sym,asym}, codebook, "
                            "codebook+refit or raw")
        bits: int = param(4, "bits per surviving weight (1-8)")
        layers: dict = param({}, "per-weight overrides, e.g. {'fc1.weight': 'codebook@3', 'fc3.weight': 'raw'}")
        min_size: int = param(32, "target weights with fewer entries are kept exact")
        nontarget: Nontarget = param("exact", "biases, norms and small tensors: exact, fp16 or bf16 (rounded), "
                                            "or int8 (uniform per tensor)")
        refit_rows: int = param(4096, "calibration rows per layer for the codebook re-fit")
        measure_alone: bool = param(True, "measure each layer quantized alone, for the report (a forward pass each)")

    def run(self, state: ModelState, ctx: PassContext) -> ModelState:
        cfg = self.config
        unknown = set(cfg.layers) - set(state.targets)
        if unknown:
            raise EvonnxError(f"quantize: {sorted(unknown)[:3]} are not target weights (targets: {state.targets})")
        default = QuantSpec.parse(cfg.scheme, cfg.bits)
        plan = {n: QuantSpec.parse(cfg.layers[n], cfg.bits) if n in cfg.layers else default
                for n in state.targets if n in cfg.layers or state.table[n].size >= cfg.min_size}
        return quantize_plan(state, ctx, plan, cfg.nontarget, cfg.refit_rows, self.name, asdict(cfg),
                             measure_alone=cfg.measure_alone)


def quantize_plan(state: ModelState, ctx: PassContext, plan: dict[str, QuantSpec], nontarget: str,
                  refit_rows: int, pass_name: str, settings: dict, extra: dict | None = None,
                  quantizer: Quantizer | None = None, exact: set[str] = frozenset(),
                  measure_alone: bool = True, alone: dict[str, float] | None = None,
                  quantized: dict[str, Quantized] | None = None) -> ModelState:
    """Quantize the planned weights (`quantized`: those the caller has done already), round the other float
    tensors but `exact` as `nontarget` says, measure the result against the incoming model and the teacher, and
    record it. Each layer's damage alone (`Measure.damage`: a cosine task's mean drop, else KL), for the report:
    `alone` when the caller has it (the bit allocation's sensitivity), else measured when `measure_alone`."""
    engine = ctx.engine(state)
    base = {n: state.current(n) for n in engine.weight_names}  # every weight as it comes in, biases too
    quantizer = quantizer or Quantizer(state, engine, refit_rows, ctx.seed, ctx.metric)
    fidelity = Fidelity(engine, base, ctx.metric)
    done = {n: (quantized or {}).get(n) or quantizer.quantize(n, spec) for n, spec in plan.items()}
    rows = [row(q, plan[n], state.current(n)) for n, q in done.items()]
    weights = {n: q.weight for n, q in done.items()}
    if alone is None and measure_alone:
        alone = {n: m.damage for n, m in zip(done, fidelity.evaluate([{n: q.weight} for n, q in done.items()]))}
    for r in rows:
        if alone is not None and r["name"] in alone:
            r["damage_alone"] = alone[r["name"]]  # against the incoming student, this layer quantized alone
    quant = {n: q.tensor for n, q in done.items()}
    rounded = []
    if nontarget != "exact":
        for name in nontargets(state, set(plan) | set(exact)):
            t, w = round_nontarget(state, name, nontarget)
            quant[name], weights[name] = t, w
            rounded.append({"name": name, "scheme": nontarget, "bits": 8 if nontarget == "int8" else 16,
                            "est_bytes": round(coded_bytes(t)["total"], 1)})
    outputs = engine.outputs({**base, **weights})
    joint = fidelity.measure(outputs)
    before, after = (compare(engine.output_names, engine.teacher, o, engine.calib.labels, engine.groups)
                     for o in (fidelity.reference, outputs))
    record = {"pass": pass_name, "settings": settings, "layers": rows, "nontarget": rounded,
              "bumped": int(sum(q.bumped for q in done.values())),
              "fallbacks": [n for n, q in done.items() if q.fallback],
              "est_bytes": float(sum(r["est_bytes"] for r in rows)),
              "fidelity": metrics_summary(joint.metrics), "before": metrics_summary(before),
              "after": metrics_summary(after),
              **(extra or {})}
    log.info(f"{pass_name}: {len(done)} weights, est. {record['est_bytes'] / 1024:.1f} KiB coded, KL from the incoming "
                 f"model {joint.metrics.fitness:.3g}, fitness vs teacher {before.fitness:.4g} -> {after.fitness:.4g}, "
                 f"{record['bumped']} survivors kept off zero")
    log.info(format_rows(rows))
    return state.replace(weights=weights, quant=quant, record=record)

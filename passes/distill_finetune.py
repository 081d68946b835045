"""distill-finetune: the student learns from the teacher's soft outputs, its sparsity mask fixed (or regrown).

The ONNX graph runs as a torch module (passes/torchnet/convert.py) whose parameters are the student's
weights; the teacher is the same graph with the original weights. Training (passes/torchnet/distill.py)
minimises the temperature-scaled KL to the teacher on calibration inputs, optionally augmented, with
labels optional. Pruned entries stay exactly zero; quantized weights train through a straight-through
estimator on their fixed grid (or codebook centroids with fixed assignments), or are re-quantized
afterwards with the same scheme and bits, so `weights[n] == dequantize(quant[n])` holds at the end.
Budget in steps and seconds; checkpoints in the work dir, resumed bit-identically. Optionally Weight
Evolution (passes/torchnet/weight_evolution.py) crosses inferior filters with important ones during training,
and optionally prune-and-regrow (passes/torchnet/regrow.py) moves kept entries of the float weights' masks.
"""
from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import asdict, dataclass, field
from typing import ClassVar, Literal

import numpy as np

from evonnx.errors import EvonnxError
from evonnx.passes.base import Pass, PassContext, param, register
from evonnx.passes.state import ModelState

log = logging.getLogger(__name__)


@dataclass
class WeightEvolution:
    """Weight Evolution (Lin et al. 2021, passes/torchnet/weight_evolution.py): cross inferior filters with
    important ones of the same layer, on allowed entries only."""

    enabled: bool = param(False, "evolve filters during training")
    every: int = param(100, "steps between weight evolutions")
    fraction: float = param(0.2, "global share of evolvable filters under the norm threshold (paper: 0.2)")
    relative: float = param(0.1, "a filter is inferior only if its norm is <= this x its layer's largest")
    decay: bool = param(True, "scale `fraction` by the cosine learning-rate factor (the paper shrinks it as the "
                              "learning rate drops)")
    layers: Literal["conv", "all"] = param("conv", "conv (Conv/ConvTranspose filters, as the paper) | all (also 2-D Gemm/MatMul "
                                "weights); never a weight whose channels are graph outputs")


@dataclass
class Regrow:
    """Prune-and-regrow (RigL, Evci et al. 2020, passes/torchnet/regrow.py) of the float weights' masks."""

    share: float = param(0.0, "share of each pruned float weight's kept entries moved every `every` steps, from "
                              "the smallest |w| to the largest |dL/dw|, cosine-decayed to 0 at `until` of the run "
                              "(0: masks fixed)")
    every: int = param(100, "steps between mask updates")
    until: float = param(0.75, "fraction of the run after which masks stay fixed")


@register
class DistillFinetune(Pass):
    """Fine-tune the student's surviving weights by distillation from the teacher."""

    name = "distill-finetune"

    @dataclass
    class Config:
        steps: int = param(1000, "optimizer steps (one batch each)")
        time_limit: float = param(0.0, "stop after this many seconds, resumed runs included (0: no limit)")
        batch_size: int = param(128, "calibration samples per step")
        lr: float = param(3e-4, "Adam learning rate at the start of the cosine schedule")
        temperature: float = param(2.0, "softmax temperature of the distillation KL")
        label_weight: float = param(0.0, "weight of the cross-entropy on calibration labels (0: teacher only)")
        augment: list = param(["noise"], "input augmentations the teacher labels: shift, noise, mixup (float "
                                                 "inputs only, never an attention mask)")
        shift: int = param(2, "largest random shift in pixels (4-D inputs)")
        noise: float = param(0.1, "Gaussian noise, as a fraction of the input's standard deviation")
        mixup: float = param(0.4, "mixup Beta(a, a) parameter")
        holdout: float = param(0.0, "fraction of the training samples (`data`, else the calibration set) held out "
                                    "to pick the best step (0: pick on all of the calibration set)")
        eval_every: int = param(100, "steps between validations")
        keep_best: bool = param(True, "return the weights of the best validation, not the last step")
        trainable: Literal["all", "targets"] = param("all", "all (every float weight but BatchNorm statistics) | targets")
        quant_mode: Literal["ste", "requantize"] = param("ste", "quantized weights: ste (train on the fixed grid / centroids) | "
                                       "requantize (train in float, then same scheme and bits afresh)")
        freeze_zeros: bool = param(True, "zero entries of unmasked target weights stay zero")
        data: str = param("", "an .npz of training inputs (optional `labels`) used instead of the calibration "
                              "set, e.g. a large unlabeled set; the calibration set then validates unless "
                              "holdout > 0")
        checkpoint_every: int = param(200, "steps between checkpoints in the work dir")
        resume: bool = param(True, "resume from the work dir's checkpoint of the same run")
        weight_evolution: WeightEvolution = field(default_factory=WeightEvolution)
        regrow: Regrow = field(default_factory=Regrow)
        # the flat spellings of the option groups (`weight_evolution = true`, `we_every = 50`, `regrow = 0.3`)
        ALIASES: ClassVar[dict[str, str]] = {
            "weight_evolution": "weight_evolution.enabled", "regrow": "regrow.share",
            **{f"we_{k}": f"weight_evolution.{k}" for k in ("every", "fraction", "relative", "decay", "layers")},
            **{f"regrow_{k}": f"regrow.{k}" for k in ("every", "until")}}

    def run(self, state: ModelState, ctx: PassContext) -> ModelState:
        from evonnx.passes.torchnet import require_torch, torch_device
        torch = require_torch(self.name)
        from evonnx.passes.torchnet import distill
        from evonnx.passes.torchnet.convert import OnnxModule

        cfg = self.config
        bad = set(cfg.augment) - set(distill.AUGMENTS)
        if bad:
            raise EvonnxError(f"{self.name}: unknown augment {sorted(bad)} (known: {distill.AUGMENTS})")
        rg, we = cfg.regrow, cfg.weight_evolution
        if not 0 <= rg.share <= 1 or rg.every < 1 or not 0 < rg.until <= 1:
            raise EvonnxError(f"{self.name}: regrow share must be in [0, 1], every >= 1, 0 < until <= 1")
        if we.every < 1 or not 0 <= we.fraction <= 1:
            raise EvonnxError(f"{self.name}: weight_evolution every must be >= 1, 0 <= fraction <= 1")
        t_start = time.perf_counter()
        names = trainable_names(state, cfg.trainable)
        device = torch_device(torch, ctx.device)
        teacher = OnnxModule(state.model, values=state.held, label=state.label).to(device)
        # every changed weight at its current value, frozen ones too (re-fitted or rounded biases)
        student = OnnxModule(state.model, names, {**state.held, **state.weights}, label=state.label).to(device)
        constraints = build_constraints(state, names, cfg.quant_mode, cfg.freeze_zeros)
        for n, c in constraints.items():
            student.transforms[n] = c.to(device).transform
        folder = ctx.pass_dir(self.name)
        train = None
        if cfg.data:
            from evonnx.passes.engine.calib import load_npz
            extra = load_npz(cfg.data, state.model)
            train = (extra.inputs, extra.labels)
        fp = _fingerprint(state, ctx, {k: v for k, v in asdict(cfg).items() if k != "data"}, train)  # data: by content
        torch.manual_seed(ctx.seed)
        trainer = distill.Distiller(teacher, student, constraints, ctx.calib.inputs, ctx.calib.labels, cfg,
                                    ctx.seed, folder / "checkpoint.npz" if folder else None, fp, ctx.progress,
                                    train=train, evolve_axes=evolution_axes(state, names, constraints, we.layers)
                                    if we.enabled else None, metric=ctx.metric)
        if cfg.resume:
            trainer.resume()
        val_before = trainer.curve[0][1] if trainer.curve else trainer.validate()
        stop = trainer.run()
        weights, masks, quant = {}, {}, {}
        for n in names:
            latent = student.parameter(n).detach().cpu().numpy().astype(state.current(n).dtype)
            c = constraints.get(n)
            if c is None:
                weights[n] = latent
                continue
            weights[n], record = c.finish(latent)
            if record is not None:
                quant[n] = record
            if n in trainer.regrown:
                masks[n] = c.mask
            elif c.mask is not None and (n in state.masks or not c.mask.all()):
                masks[n] = state.masks[n] if n in state.masks else c.mask
        out = state.replace(weights=weights, masks=masks, quant=quant)
        engine = ctx.engine(state)
        base = {n: state.current(n) for n in engine.weight_names}
        before, after = engine.evaluate([base, {n: out.current(n) for n in engine.weight_names}])
        record = {"pass": self.name, "settings": asdict(cfg), "stop_reason": stop, "steps": trainer.step,
                  "trained": names, "quantized": sorted(quant), "val_kl_before": val_before,
                  "val_kl_best": trainer.best_val, "best_step": trainer.best_step, "curve": trainer.curve,
                  "fitness_before": before.fitness, "fitness": after.fitness,
                  "accuracy_before": before.accuracy, "accuracy": after.accuracy,
                  "train_seconds": trainer.elapsed(), "wall_seconds": time.perf_counter() - t_start,
                  "torch_device": device.type}
        if we.enabled:
            record.update(evolvable=sorted(trainer.evolve_axes), evolved_filters=dict(trainer.evolved))
        if rg.share > 0:
            record.update(regrown=dict(trainer.regrown))
        log.info(f"{self.name}: {trainer.step} steps ({stop}, torch on {device.type}), validation KL "
                     f"{val_before:.4g} -> {trainer.best_val:.4g} "
                     f"(step {trainer.best_step}), calibration fitness {before.fitness:.4g} -> {after.fitness:.4g}")
        return out.replace(record=record)


def trainable_names(state: ModelState, which: str) -> list[str]:
    """Float weights to train: targets, or all but BatchNorm statistics and rounded non-target records."""
    if which == "targets":
        return list(state.targets)
    stats = {node.input[i] for node in state.model.graph.node if node.op_type == "BatchNormalization"
             for i in (3, 4) if len(node.input) > i}
    targets = set(state.targets)
    return [w.name for w in state.table if w.name not in stats and w.dtype in ("float32", "float64")
            and not (w.name in state.quant and w.name not in targets)]


def build_constraints(state: ModelState, names: list[str], mode: str, freeze_zeros: bool) -> dict:
    from evonnx.passes.torchnet.constrain import Constraint
    out = {}
    targets = set(state.targets)
    for n in names:
        mask = state.masks.get(n)
        mask = None if mask is None else mask.astype(bool)
        if n in targets and freeze_zeros:
            nonzero = state.current(n) != 0
            mask = nonzero if mask is None else mask & nonzero
        if mask is not None and mask.all() and n not in state.quant:
            mask = None
        if mask is not None or n in state.quant:
            out[n] = Constraint(n, mask, state.quant.get(n), mode, state.table[n].channel_axis)
    return out


_PASS_THROUGH = {"Add", "Sub", "Mul", "Div", "Relu", "Sigmoid", "Softmax", "LogSoftmax", "Identity", "Cast",
                 "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose"}


def evolution_axes(state: ModelState, names: list[str], constraints: dict, which: str) -> dict[str, int]:
    """Weights Weight Evolution may change, with their filter axes: trained conv filters (`which` "all":
    also 2-D matrices), read in the main graph only, not codebook-coded (their latent is unused), and not
    heads (output channels reaching a graph output through elementwise / reshaping ops only: classes)."""
    graph = state.model.graph
    readers: dict[str, list] = {}
    for node in graph.node:
        for t in node.input:
            readers.setdefault(t, []).append(node)
    outputs = {o.name for o in graph.output}

    def head(nodes) -> bool:
        todo, seen = [t for node in nodes for t in node.output], set()
        while todo:
            t = todo.pop()
            if t in outputs:
                return True
            if t not in seen:
                seen.add(t)
                todo += [o for node in readers.get(t, []) if node.op_type in _PASS_THROUGH for o in node.output]
        return False

    out = {}
    for n in names:
        info = state.table[n]
        kind_ok = info.role == "conv" or (which == "all" and info.role == "matrix" and len(info.shape) == 2)
        c = constraints.get(n)
        if (not kind_ok or info.channel_axis is None or any(u.graph for u in info.consumers)
                or (c is not None and c.scheme == "codebook") or head(readers.get(n, []))):
            continue
        out[n] = info.channel_axis
    return out


def _fingerprint(state: ModelState, ctx: PassContext, settings: dict, train: tuple | None) -> str:
    from evonnx.passes.sparsity import checkpoint
    h = hashlib.sha256()
    for array in [] if train is None else [*train[0].values(), *([] if train[1] is None else [train[1]])]:
        h.update(np.ascontiguousarray(array).tobytes())
    for n in sorted(state.masks):
        h.update(n.encode() + np.packbits(state.masks[n]).tobytes())
    for n in sorted(state.quant):
        h.update(n.encode() + state.quant[n].codes.tobytes())
    return checkpoint.fingerprint(state.model, ctx.calib.inputs, {**settings, "state": h.hexdigest()}, ctx.seed,
                                  state.weights, state.held)

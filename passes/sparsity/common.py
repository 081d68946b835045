"""What the sparsification passes share: the target/re-fit config, priors, re-fitting a layer, one-shot pruning."""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from evonnx.errors import EvonnxError
from evonnx.passes.base import PassContext, param
from evonnx.passes.engine import providers as prov
from evonnx.passes.sparsity import refit as rf
from evonnx.passes.sparsity import targets as tg
from evonnx.passes.sparsity.layers import Layer, analyse
from evonnx.passes.sparsity.suffix import Evaluator, LayerView
from evonnx.passes.state import ModelState

LEVELS = np.array([0.0, 0.5, 0.7, 0.8, 0.9, 0.95, 0.98])


ALLOCATIONS = ("sensitivity", "lamp", "uniform")
MAX_INVERSE = 2048  # the widest layer input (K) whose K x K Gram is inverted (hessian prior, SparseGPT)
MAX_REFIT_WORK = 1 << 35  # out x K^2 of the largest layer re-fitted: one solver iteration's product, ~3e10 multiply-adds


@dataclass
class TargetConfig:
    """Options every sparsification pass shares, so their results compare fairly."""

    sparsity: float | None = param(None, "global fraction of target-weight entries to zero")
    layer_sparsity: dict = param({}, "explicit per-layer targets {weight name: fraction}; others get `sparsity`")
    allocation: str = param("sensitivity", "how a global target is split: sensitivity (measured) | lamp (by LAMP "
                            "scores of the weights, no data) | uniform")
    refit: bool = param(True, "re-fit surviving weights (and biases) to the teacher's layer outputs")
    ridge: float = param(1e-3, "ridge of the re-fit, relative to the mean input energy")
    refit_relu: bool = param(True, "a layer read only by a Relu is re-fitted to the teacher's Relu output "
                                   "(negative pre-activations free), not its pre-activation")
    fitness_samples: int = param(256, "calibration samples the fitness is measured on")
    refit_samples: int = param(1024, "calibration samples the re-fit and the allocation use")
    weights: list = param([], "restrict pruning to these weights (default: all targets)")


@dataclass
class ScopedTargetConfig(TargetConfig):
    """Targets of the score-based one-shot passes (magnitude, gradient saliency)."""

    scope: str = param("global", "global: one threshold over all layers | layer: per-layer targets")
    allocation: str = param("uniform", "with scope=layer: how a global target is split (uniform | lamp | "
                            "sensitivity)")


def check_scope(pass_name: str, cfg: ScopedTargetConfig) -> None:
    if cfg.scope not in ("global", "layer"):
        raise EvonnxError(f"{pass_name}: scope must be global or layer, got {cfg.scope!r}")


def masks_by_score(pass_name: str, state: ModelState, ev: Evaluator, layers: list[Layer], cfg: ScopedTargetConfig,
                   scores: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Keep-masks [out, K] zeroing the lowest flat `scores` of each layer: one threshold over all layers
    (scope=global, exact global count), else each layer to its own target (explicit, uniform or measured)."""
    check_scope(pass_name, cfg)
    if cfg.scope == "global" and not cfg.layer_sparsity:
        tg.resolve([l.weight for l in layers], {}, cfg.sparsity, None)  # validates the target
        flat = np.concatenate([scores[l.weight] for l in layers])
        keep = tg.keep_mask(flat, tg.zero_count(flat.size, cfg.sparsity))
        parts = np.split(keep, np.cumsum([l.size for l in layers])[:-1])
        return {l.weight: p.reshape(l.mat_shape) for l, p in zip(layers, parts)}
    targets, _ = layer_targets(state, ev, layers, cfg, "magnitude")
    return {l.weight: tg.keep_mask(scores[l.weight], tg.zero_count(l.size, targets[l.weight])).reshape(l.mat_shape)
            for l in layers}


def setup(state: ModelState, ctx: PassContext, cfg: TargetConfig,
          embeddings: bool = True) -> tuple[list[Layer], Evaluator]:
    """The layers of the targets (cfg.weights, or every target; without `embeddings`, embedding tables
    aside) and their evaluator."""
    names = list(cfg.weights) or state.targets
    if not embeddings:
        names = [n for n in names if state.table[n].role != "embedding"]
    layers = analyse(state, names)
    ev = Evaluator(state, layers, ctx.calib, prov.resolve(ctx.device), cfg.fitness_samples, cfg.refit_samples,
                   ctx.batch_size or 256, ctx.workers, ctx.metric)
    return layers, ev


def mask_of(state: ModelState, layer: Layer) -> np.ndarray:
    """The layer's current keep-mask as [out, K]."""
    if layer.weight in state.masks:
        return layer.to_mat(state.masks[layer.weight]).astype(bool)
    return np.ones(layer.mat_shape, bool)


def priors(view: LayerView, kinds: list[str], ridge: float, x: np.ndarray | None) -> dict[str, np.ndarray]:
    """Per-entry saliencies of the layer's current weights (lower = safer to zero), flat [out*K].

    magnitude |w|; wanda |w| * ||x_k|| (input-activation norm, over the rows of real tokens); hessian
    w^2 / [(H + lam I)^-1]_kk, the OBS cost of zeroing one entry when the rest of its row is re-fitted (layers
    with K <= 2048; wider ones get wanda).
    """
    w = np.abs(view.w_mat)  # float32: a layer of a billion entries needs no 8-byte copies
    out = {}
    norms = view.x_norms if view.layer.fast else None
    for kind in kinds:
        if kind == "magnitude" or norms is None:
            out[kind if norms is not None else "magnitude"] = w.ravel()
        elif kind == "wanda":
            out[kind] = (w * norms[None].astype(np.float32)).ravel()
        elif kind == "hessian" and x is not None and view.k <= MAX_INVERSE:
            h = x.T.astype(np.float64) @ x.astype(np.float64)
            h[np.diag_indices_from(h)] += ridge * (np.mean(np.diag(h)) or 1.0)
            out[kind] = (w.astype(np.float64) ** 2 / np.diag(np.linalg.inv(h))[None]).ravel()
        elif kind == "hessian":  # too wide to invert (or no activations): fall back to wanda
            out[kind] = (w * norms[None].astype(np.float32)).ravel()
    return out


def refit_layer(view: LayerView, mask: np.ndarray, w_mat: np.ndarray, cfg: TargetConfig,
                data: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray | None, dict]:
    """Re-fit the kept entries (and the layer's own bias) to the teacher's layer output on the student's inputs.
    A layer whose re-fit iteration costs more than MAX_REFIT_WORK (out x K^2: a ResNet's 512 x 4608 conv is 2^33, an
    8192 x 8192 matrix 2^39, hours on a CPU) keeps its survivors as they are (stats say `too_large`)."""
    layer = view.layer
    if layer.out * view.k ** 2 > MAX_REFIT_WORK:
        return np.where(mask, w_mat, 0).astype(w_mat.dtype, copy=False), None, {"too_large": True}
    x, t = data
    beta = layer.bias_scale
    bias, floor = None, np.zeros(layer.out, np.float32)
    if layer.bias and beta != 0:
        bias = view.weights[layer.bias].astype(np.float32) * np.float32(beta)
    else:  # a bias we may not change: fit W to the teacher output minus the student's constant offset
        rest = view.y_flat - view.x_t.T @ view.w_mat.T
        offset = np.mean(rest if view.row_keep is None else rest[view.row_keep], axis=0)
        t, floor = t - offset[None], -offset.astype(np.float32)
    relu = floor if cfg.refit_relu and layer.relu_out else None
    new_w, new_b, stats = rf.refit(w_mat, mask, x, t, bias, cfg.ridge, relu_floor=relu)
    if new_b is not None:
        new_b = (new_b / np.float32(beta)).astype(view.weights[layer.bias].dtype)
    return new_w, new_b, stats


def refit_seconds(layers: list[Layer], cfg: TargetConfig) -> float:
    """At most what re-fitting each of `layers` once takes (0 without `cfg.refit`; too large a layer is not
    re-fitted, see `refit_layer`)."""
    if not cfg.refit:
        return 0.0
    return sum(rf.seconds(l.out, l.mat_shape[1], cfg.refit_relu and l.relu_out) for l in layers
               if l.fast and l.out * l.mat_shape[1] ** 2 <= MAX_REFIT_WORK)


def commit(state: ModelState, layer: Layer, mask: np.ndarray, w_mat: np.ndarray, bias: np.ndarray | None) -> ModelState:
    dtype = state.original(layer.weight).dtype
    weights = {layer.weight: layer.from_mat(np.where(mask, w_mat, 0)).astype(dtype, copy=False)}
    if bias is not None:
        weights[layer.bias] = bias
    return state.replace(weights=weights, masks={layer.weight: layer.from_mat(mask).astype(bool, copy=False)})


def one_shot(state: ModelState, ev: Evaluator, layers: list[Layer], masks: dict[str, np.ndarray],
             cfg: TargetConfig) -> ModelState:
    """Apply keep-masks ([out, K]) to all layers; with re-fit, layer by layer in graph order on the student's inputs."""
    for layer in layers:
        mask = masks[layer.weight]
        w_mat = layer.to_mat(state.current(layer.weight))
        bias = None
        if cfg.refit and layer.fast:
            view = ev.visit(layer, state)
            w_mat, bias, _ = refit_layer(view, mask, view.w_mat, cfg, view.refit_data())
        state = commit(state, layer, mask, w_mat, bias)
    return state


def layer_targets(state: ModelState, ev: Evaluator, layers: list[Layer], cfg: TargetConfig, prior: str,
                  stop: Callable[[], bool] | None = None, bar=None) -> tuple[dict[str, float], dict]:
    """Per-layer sparsities: explicit, uniform, by LAMP scores, or a global target allocated by measured
    sensitivity.

    `stop()` turning true while the sensitivities are measured (a time budget) ends the measuring: the
    target is then split by LAMP scores, and the curves returned are those measured. `bar` (passes/progress.py)
    moves by one per layer measured."""
    sizes = {l.weight: l.size for l in layers}
    explicit = tg.resolve(list(sizes), sizes, cfg.sparsity, cfg.layer_sparsity)
    if explicit is not None:
        return explicit, {}
    if cfg.allocation not in ALLOCATIONS:
        raise EvonnxError(f"allocation must be one of {ALLOCATIONS}, got {cfg.allocation!r}")
    if cfg.allocation == "uniform":
        return {n: float(cfg.sparsity) for n in sizes}, {}
    by_lamp = tg.lamp({n: state.current(n) for n in sizes}, float(cfg.sparsity))
    if cfg.allocation == "lamp":
        return by_lamp, {}
    curves = {}
    for l in layers:
        if stop is not None and stop():
            return by_lamp, {n: c.tolist() for n, c in curves.items()}
        curves[l.weight] = sensitivity(state, ev, l, prior, cfg)
        if bar is not None:
            bar.update(1)
    return tg.allocate(LEVELS, curves, sizes, float(cfg.sparsity)), {n: c.tolist() for n, c in curves.items()}


def sensitivity(state: ModelState, ev: Evaluator, layer: Layer, prior: str, cfg: TargetConfig) -> np.ndarray:
    """Fitness of pruning this layer alone (by `prior`, re-fitted or not) at each of LEVELS."""
    view = ev.visit(layer, state)
    data = view.refit_data() if layer.fast else None
    score = next(iter(priors(view, [prior], cfg.ridge, data[0] if data else None).values()))
    order = np.argsort(score, kind="stable")
    counts = [tg.zero_count(layer.size, s) for s in LEVELS]
    if not (cfg.refit and layer.fast):
        return view.evaluate([order[:c] for c in counts])
    out = []
    for c in counts:
        if c == 0:
            out.append(0.0)
            continue
        mask = np.ones(layer.size, bool)
        mask[order[:c]] = False
        mask = mask.reshape(layer.mat_shape)
        w, b, _ = refit_layer(view, mask, view.w_mat, cfg, data)
        out.append(view.evaluate_dense(w, b))
    return np.array(out)


def record(name: str, cfg, state: ModelState, layers: list[Layer], ev: Evaluator, t0: float, **extra) -> dict:
    fit = ev.fitness(state)
    return {"pass": name, "settings": {k: v for k, v in vars(cfg).items()},
            "layer_sparsity": {l.weight: state.sparsity(l.weight) for l in layers},
            "sparsity": float(sum(state.sparsity(l.weight) * l.size for l in layers)
                              / max(sum(l.size for l in layers), 1)),
            "fitness": fit, "evaluations": ev.counter.evaluations, "wall_seconds": time.perf_counter() - t0, **extra}

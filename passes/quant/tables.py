"""Output-side Grams of embedding tables, for GPTQ's rounding and the codebook re-fit of their rows.

A Gather's table has no input activations, so the Gram of a matrix layer (X^T X of its inputs) does not exist
for it, and its rows were rounded to nearest. What an error in a gathered row costs is decided downstream: a
LayerNorm ignores any error along the all-ones direction, and the encoder weighs features unequally. The
table's Gram is S = sum over tokens t of J_t^T J_t, J_t the Jacobian of the outputs (each scaled to unit RMS,
pads left out; under a pooled cosine metric, each sample's pooled output scaled to unit length, as the metric
reads it) with respect to the row gathered at t. It is measured through torchnet with random probes r
(E[r r^T] = I, so E[(J^T r)(J^T r)^T] = J^T J): the gradient of r . outputs with respect to a zero tensor added
to the Gather's output. Every row of the table is rounded under the same S, so the rows the calibration never
touches are treated like any other: no row is judged by its own use (the vocabulary rule of the embeddings).
A table read by anything but Gathers of the main graph, or a graph torchnet cannot run, gets no Gram.
"""
from __future__ import annotations

import logging

import numpy as np

from evonnx.errors import EvonnxError
from evonnx.passes.sparsity import tokens
from evonnx.passes.sparsity.layers import Layer
from evonnx.passes.state import ModelState

log = logging.getLogger(__name__)

PROBES = 8  # random projections of the outputs per calibration batch
MAX_SAMPLES = 64  # calibration samples the probes run on (whole batches: at least one)


def table_views(state: ModelState, names: list[str]) -> dict[str, Layer]:
    """The [rows, features] views of the named embedding tables that only Gathers of the main graph read."""
    out = {}
    for name in names:
        info = state.table[name]
        if (info.role == "embedding" and len(info.shape) == 2 and info.consumers
                and all(c.op_type == "Gather" and c.input_index == 0 and not c.graph for c in info.consumers)):
            out[name] = Layer(name, tuple(info.shape), kind="table")
    return out


def table_grams(state: ModelState, engine, views: dict[str, Layer], seed: int = 0,
                pool: str = "") -> dict[str, np.ndarray]:
    """S [features, features] (float32) per table of `views` (module docstring; `pool`: the Cosine metric's
    pooling, "" for none); {} where torchnet cannot run the graph (logged)."""
    if not views:
        return {}
    import torch

    from evonnx.passes.torchnet.convert import OnnxModule

    model = state.model
    gathered = {n.output[0]: n.input[0] for n in model.graph.node if n.op_type == "Gather" and n.input[0] in views}
    try:
        module = OnnxModule(model, values=state.values(), label=state.label)
    except EvonnxError as exc:
        log.info(f"embedding tables rounded to nearest: {exc}")
        return {}
    probes: dict[str, torch.Tensor] = {}

    def tap(value: str):
        def add(y: torch.Tensor) -> torch.Tensor:
            probes[value] = torch.zeros_like(y, requires_grad=True)
            return y + probes[value]
        return add

    module.taps = {value: tap(value) for value in gathered}
    rng = np.random.default_rng(seed)
    grams = {name: np.zeros((view.shape[1],) * 2) for name, view in views.items()}
    for batch in engine.batches[:max(1, -(-MAX_SAMPLES // engine.batch_size))]:
        real = tokens.token_keep(dict(batch), engine.calib.axes)
        outputs = module(*[torch.from_numpy(np.ascontiguousarray(batch[n])) for n in module.input_names])
        probed = [_probed(y, real, pool) for y in outputs if y.is_floating_point()]
        if not probed:
            return {}
        for k in range(PROBES):
            objective = sum((torch.from_numpy(rng.standard_normal(y.shape).astype(np.float32)) * y).sum()
                            for y in probed)
            values = list(probes)
            grads = torch.autograd.grad(objective, [probes[v] for v in values], retain_graph=k < PROBES - 1,
                                        allow_unused=True)
            for value, g in zip(values, grads):
                if g is not None:
                    rows = g.reshape(-1, g.shape[-1]).double().numpy()
                    grams[gathered[value]] += rows.T @ rows / PROBES
    return {name: s.astype(np.float32) for name, s in grams.items() if np.any(s)}


def _probed(y, real: np.ndarray | None, pool: str):
    """What the probes project, from a float output: with `pool`, each sample's output pooled over its real
    tokens (a [samples, tokens, ...] output: their mean, or the first token) or flattened, scaled to unit length;
    without, the output over its RMS with pad tokens zeroed."""
    import torch

    mask = None
    if real is not None and y.ndim >= 2 and tuple(y.shape[:2]) == real.shape:
        mask = torch.from_numpy(real.astype(np.float32)).reshape(*real.shape, *[1] * (y.ndim - 2))
    if pool:
        if y.ndim == 3:
            y = y[:, 0] if pool == "first" else (y.mean(1) if mask is None else (y * mask).sum(1) / mask.sum(1))
        y = y.reshape(len(y), -1)
        return y / y.norm(dim=1, keepdim=True).clamp_min(1e-30)  # its Jacobian leaves out the radial part
    rms = float(torch.sqrt(torch.mean(y.detach().double() ** 2)))
    y = y / rms if rms > 0 else y * 0
    return y if mask is None else y * mask

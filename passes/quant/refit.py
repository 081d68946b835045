"""Codebook re-fit to the layer output: with the k-means assignments fixed, choose the centroids c that
minimise ||X (W_q(c) - W)^T||^2 on calibration activations X of the layer (least squares in len(c)
unknowns). With H = X^T X and one-hot assignment tensors A_k ([out, K] matrices), the normal equations
are G c = b with G_kl = sum_r a_kr^T H a_lr and b_k = sum_r a_kr^T H w_r.

Activations come from one forward pass of the float student with the layers' inputs added as outputs
(one extra session for the whole pass, never one per candidate).
"""
from __future__ import annotations

from collections.abc import Hashable

import numpy as np
import onnx

from evonnx.passes.engine.fitness import Runner
from evonnx.passes.quant.spill import Spill
from evonnx.passes.sparsity import tokens
from evonnx.passes.sparsity.graph import elem_types
from evonnx.passes.sparsity.layers import Layer, analyse
from evonnx.passes.state import ModelState


def layer_views(state: ModelState, names: list[str]) -> dict[str, Layer]:
    """Matrix views (Gemm, MatMul, Conv group 1) of the named weights that have one; others are left out."""
    return {layer.weight: layer for layer in analyse(state, names) if layer.fast}


def gram_matrices(state: ModelState, engine, layers: dict[str, Layer], store: Spill, scope: Hashable,
                  max_rows: int = 4096, seed: int = 0) -> tuple[dict[str, Hashable], dict[str, int]]:
    """H = X^T X per weight, X being the layer's input rows (im2col for Conv) on the calibration batches,
    from the float student (state.weights): about `max_rows` random rows per layer, an even share from each
    batch, padding tokens left out (by the attention-mask input, passes/sparsity/tokens.py), summed batch by
    batch in float32 (one batch's activations are held at a time; a Gram is 4 K^2 bytes, one for all the layers
    reading the same input rows) into `store` (passes/quant/spill.py) under (`scope`, its key). Returns each
    weight's key there and the rows its Gram was summed over.

    The sums that fit the store's budget, smallest first, are held in memory through the pass; each batch's
    share of the others (its rows, or its product where smaller) is parked in a file and summed after it, in
    the same order: a Gram is written at most once however many batches there are, and the sums are the same
    bit for bit whatever the budget."""
    if not layers:
        return {}, {}
    inputs = sorted({layer.x for layer in layers.values()})
    model = onnx.ModelProto()
    model.CopyFrom(state.model)  # the state's graph, shared: never edit it
    known = {o.name for o in model.graph.output}
    types = elem_types(model)
    model.graph.output.extend(onnx.helper.make_tensor_value_info(n, types.get(n, (onnx.TensorProto.FLOAT,))[0], None)
                              for n in inputs if n not in known)
    runner = Runner(model, engine.providers, f"{state.label} (activations)", state.weights, held=state.held)
    index = {n: runner.output_names.index(n) for n in inputs}
    rng = np.random.default_rng(seed)
    share = -(-max_rows // len(engine.batches))
    shared: dict[tuple, list[str]] = {}  # layers with the same input rows: one Gram (a transformer's Q, K and V)
    for name, layer in layers.items():
        shared.setdefault(gram_key(layer), []).append(name)
    width = {key: layers[names[0]].mat_shape[1] for key, names in shared.items()}
    sums: dict[tuple, np.ndarray | None] = {}  # the sums held in memory
    held = 0
    for key in sorted(shared, key=width.get):  # a small Gram saves the most parked rows per byte held
        if held + 4 * width[key] ** 2 > store.budget:
            break
        sums[key], held = None, held + 4 * width[key] ** 2
    store.reserve(held)
    counts = dict.fromkeys(shared, 0)
    for i, batch in enumerate(engine.batches):
        outs = runner.run(dict(batch))
        real = tokens.token_keep(dict(batch), engine.calib.axes)
        for key, names in shared.items():
            layer = layers[names[0]]
            x = outs[index[layer.x]].astype(np.float32, copy=False)
            rows = _rows(layer, x.shape, real)
            if len(rows) > share:
                rows = np.sort(rng.choice(rows, share, replace=False))
            xm = layer.x_mat(x, rows).astype(np.float32, copy=False)
            counts[key] += len(xm)
            if key not in sums:
                store.park((scope, key, i), (xm if len(xm) < width[key] else xm.T @ xm,))
            else:
                sums[key] = _add(sums[key], xm.T @ xm)
        del outs
    for key in shared:
        total = sums.pop(key, None)
        for i in range(len(engine.batches) if total is None else 0):
            part = store.pop((scope, key, i))[0]
            total = _add(total, part if len(part) == width[key] else part.T @ part)  # a product is K x K
        store[scope, key] = (total,)
    return ({n: (scope, k) for k, names in shared.items() for n in names},
            {n: counts[k] for k, names in shared.items() for n in names})


def _add(total: np.ndarray | None, product: np.ndarray) -> np.ndarray:
    if total is None:
        return np.require(product, requirements="W")  # a parked product comes back read-only
    total += product
    return total


def gram_key(layer: Layer) -> tuple:
    """What a layer's input rows X depend on: layers with equal keys have one Gram."""
    return layer.x, layer.kind, layer.trans_a, repr(layer.conv)


def _rows(layer: Layer, shape: tuple[int, ...], real: np.ndarray | None) -> np.ndarray:
    """The rows of a layer's input that count: all, or a MatMul's rows of real tokens ([samples, tokens] `real`
    matched to the input's leading axes, samples first)."""
    keep = (tokens.row_keep(shape[:-1], 0, 1, real) if real is not None and layer.kind == "matmul"
            and len(shape) > 1 and shape[0] == len(real) else None)
    return np.arange(layer.n_rows(shape)) if keep is None else np.flatnonzero(keep)


def refit_centroids(layer: Layer, gram: np.ndarray, weight: np.ndarray, keep: np.ndarray,
                    codes: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Least-squares centroids for fixed `codes` of the `keep` entries of `weight` (float32 result).

    Row by row of the [out, K] view, G and b gather only the kept block H[S_r, S_r] (vectorised
    bincounts over its code pairs), so the cost is sum_r |S_r|^2, not K^2 * out * len(centroids).
    """
    full = np.full(weight.shape, -1, np.int64)
    full[keep] = codes
    code_mat = layer.to_mat(full)  # [out, K]
    w_mat = layer.to_mat(np.where(keep, weight, 0)).astype(np.float64)
    k = centroids.size
    g = np.zeros(k * k)
    b = np.zeros(k)
    for r in range(code_mat.shape[0]):  # one vectorised block per output row
        s = np.flatnonzero(code_mat[r] >= 0)
        if s.size == 0:
            continue
        c = code_mat[r, s]
        block = gram[np.ix_(s, s)]
        g += np.bincount((c[:, None] * k + c[None, :]).ravel(), block.ravel(), minlength=k * k)
        b += np.bincount(c, block @ w_mat[r, s], minlength=k)
    g = g.reshape(k, k)
    c0 = centroids.astype(np.float64)
    ridge = 1e-9 * max(float(np.trace(g)) / k, 1e-30)
    try:
        c = np.linalg.solve(g + ridge * np.eye(k), b + ridge * c0)
    except np.linalg.LinAlgError:
        return centroids
    def err(v):
        return v @ g @ v - 2 * b @ v
    return c.astype(np.float32) if np.all(np.isfinite(c)) and err(c) < err(c0) else centroids

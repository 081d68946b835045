"""dead-units: zero the weights into units that nothing downstream reads (exact: no output changes).

A unit (a Gemm/MatMul output feature, a Conv output channel) is dead when every path from it goes, through
per-feature ops only (activations, pooling, BatchNormalization, a constant bias or scale), into the input of
Gemm/MatMul/Conv layers whose weights for that feature are all zero. Its incoming weights then cost bytes
and buy nothing; pruning leaves such units behind when it empties a consumer's columns (lenet300 at 97 %:
264 of 7,986 kept weights). Any other use (a graph output, Flatten, Concat, a subgraph, a weight that is no
target) keeps a unit alive. Zeroing a layer's rows can kill units of the layer before, so it repeats until
nothing changes.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import onnx

from evonnx.errors import EvonnxError
from evonnx.passes.base import Pass, PassContext, register
from evonnx.passes.sparsity.layers import Layer, analyse
from evonnx.passes.sparsity.graph import node_reads
from evonnx.passes.state import ModelState

ELEMENTWISE = {"Relu", "LeakyRelu", "Elu", "Selu", "Celu", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh",
               "Softplus", "Softsign", "Gelu", "Mish", "Identity", "Dropout", "Abs", "Neg", "Clip", "Cast"}

log = logging.getLogger(__name__)
WITH_CONSTANT = {"Add", "Sub", "Mul", "Div", "PRelu", "Max", "Min"}
CHANNELWISE = {"MaxPool", "AveragePool", "LpPool", "BatchNormalization"}  # NC... tensors (Conv outputs) only


@dataclass
class _Graph:
    readers: dict[str, list[tuple[onnx.NodeProto, int]]]
    elsewhere: set[str]  # graph outputs and names read inside subgraphs
    inits: dict[str, onnx.TensorProto]
    by_input: dict[str, list[Layer]]


def _graph(state: ModelState, layers: list[Layer]) -> _Graph:
    g = state.model.graph
    readers: dict[str, list[tuple[onnx.NodeProto, int]]] = {}
    elsewhere = {o.name for o in g.output}
    for node in g.node:
        for i, name in enumerate(node.input):
            readers.setdefault(name, []).append((node, i))
        elsewhere |= set(node_reads(node)) - set(node.input)
    by_input: dict[str, list[Layer]] = {}
    for layer in layers:
        if layer.fast and not layer.trans_a:
            by_input.setdefault(layer.x, []).append(layer)
    return _Graph(readers, elsewhere, {t.name: t for t in g.initializer}, by_input)


def _per_feature(const: onnx.TensorProto, rank: int, conv: bool) -> bool:
    """A constant operand that applies per feature: a scalar, or a vector along the feature axis (the last
    one, or axis 1 of a rank-`rank` Conv output), right-aligned as broadcasting aligns it."""
    dims = list(const.dims)
    big = [len(dims) - i for i, d in enumerate(dims) if d != 1]  # positions from the right
    return not big or (len(big) == 1 and big[0] == (rank - 1 if conv else 1))


def _consumers(layer: Layer, g: _Graph) -> list[Layer] | None:
    """The layers whose inputs `layer`'s units reach through per-feature ops, or None if any other use."""
    conv, rank = layer.kind == "conv", len(layer.shape)
    found, stack, seen = [], [layer.y], set()
    while stack:
        t = stack.pop()
        if t in seen:
            continue
        seen.add(t)
        if t in g.elsewhere:
            return None
        layer_inputs = {id(c.node) for c in g.by_input.get(t, [])}
        for node, i in g.readers.get(t, []):
            others = [n for j, n in enumerate(node.input) if j != i and n]
            if any(o in g.readers or o in g.elsewhere for o in node.output[1:] if o):
                return None  # a second output read (MaxPool indices, BatchNormalization statistics)
            if id(node) in layer_inputs and i == 0:
                found += [c for c in g.by_input[t] if c.node is node]
                if any((c.kind == "conv") != conv for c in found):
                    return None
                continue
            if node.op_type in ELEMENTWISE and all(n in g.inits for n in others):
                pass
            elif node.op_type in WITH_CONSTANT and len(others) == 1 and others[0] in g.inits \
                    and _per_feature(g.inits[others[0]], rank, conv):
                pass
            elif node.op_type in CHANNELWISE and conv and i == 0 and all(n in g.inits for n in others):
                pass
            else:
                return None
            stack.append(node.output[0])
    return found


def _used(consumer: Layer, w: np.ndarray, units: int) -> np.ndarray | None:
    """Which of `units` input features `consumer`'s current weights read (None: its shape does not match)."""
    m = consumer.to_mat(w) != 0
    if m.shape[1] % units:
        return None
    return m.reshape(m.shape[0], units, -1).any(axis=(0, 2))


@register
class DeadUnits(Pass):
    """Zero the rows of units whose outputs every consumer ignores (exact)."""

    name = "dead-units"

    @dataclass
    class Config:
        pass

    def run(self, state: ModelState, ctx: PassContext) -> ModelState:
        quantized = sorted(set(state.quant) & set(state.targets))
        if quantized:
            raise EvonnxError(f"{self.name}: run it before quantization ({quantized[0]!r} is already quantized)")
        layers = [l for l in analyse(state, state.targets) if l.fast]
        g = _graph(state, layers)
        paths = {l.weight: _consumers(l, g) for l in layers}
        removed: dict[str, int] = {}
        changed = True
        while changed:
            changed = False
            for layer in layers:
                consumers = paths[layer.weight]
                if not consumers:
                    continue
                alive = np.zeros(layer.out, bool)
                for c in consumers:
                    used = _used(c, state.current(c.weight), layer.out)
                    alive |= np.ones(layer.out, bool) if used is None else used
                w = layer.to_mat(state.current(layer.weight))
                dead_entries = (w != 0) & ~alive[:, None]
                n = int(dead_entries.sum())
                if not n:
                    continue
                mask = (layer.to_mat(state.masks[layer.weight]) if layer.weight in state.masks else w != 0) \
                    & ~dead_entries
                w = np.where(dead_entries, 0, w).astype(w.dtype)
                state = state.replace(weights={layer.weight: layer.from_mat(w)},
                                      masks={layer.weight: layer.from_mat(mask)})
                removed[layer.weight] = removed.get(layer.weight, 0) + n
                changed = True
        total = sum(removed.values())
        log.info(f"{self.name}: {total} weights into dead units zeroed"
                     + (" (" + ", ".join(f"{k}: {v}" for k, v in removed.items()) + ")" if removed else ""))
        return state.replace(record={"pass": self.name, "settings": {}, "removed": removed, "sparsity":
                                     state.global_sparsity()})

"""Graph surgery for cheap evaluation: a probe model exposing layer activations, and downstream suffixes."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from evonnx.passes.engine.fitness import expose_weights
from evonnx.runtime.model_io import weight_free
from evonnx.runtime.weights import walk_graphs

MAX_IR = 10


def node_reads(node: onnx.NodeProto) -> list[str]:
    """Every value a node reads, including outer-scope names read inside its subgraphs."""
    names = [n for n in node.input if n]
    for attr in node.attribute:
        subs = [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)
        for sub in subs:
            for _, g in walk_graphs(sub):
                local = {v.name for v in g.input} | {t.name for t in g.initializer} | {o for n in g.node for o in n.output}
                names += [n for nd in g.node for n in nd.input if n and n not in local]
    return list(dict.fromkeys(names))


@dataclass
class Suffix:
    """The nodes downstream of one layer output, as a standalone model (None when nothing is downstream)."""

    model: onnx.ModelProto | None
    inputs: list[str]  # the layer output first, then side activations / graph inputs it also reads
    outputs: list[str]  # graph outputs the suffix computes


def elem_types(model: onnx.ModelProto) -> dict[str, tuple[int, int | None]]:
    """(elem_type, rank) of every value shape inference can type (inferred on a weight-free copy: any size)."""
    inferred = onnx.shape_inference.infer_shapes(weight_free(model)[0])
    out = {}
    for v in [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]:
        t = v.type.tensor_type
        if v.type.HasField("tensor_type"):
            out[v.name] = (t.elem_type, len(t.shape.dim) if t.HasField("shape") else None)
    return out


def suffix_structure(model: onnx.ModelProto, y: str) -> tuple[list[int], list[str], list[str]]:
    """Indices of the nodes downstream of value `y`, the values they read from outside, the graph outputs they make."""
    inits = {t.name for t in model.graph.initializer}
    produced, picked = {y}, []
    for i, node in enumerate(model.graph.node):
        if any(n in produced for n in node_reads(node)):
            picked.append(i)
            produced.update(o for o in node.output if o)
    made = {o for i in picked for o in model.graph.node[i].output}
    reads = [n for i in picked for n in node_reads(model.graph.node[i]) if n not in made and n not in inits]
    inputs = list(dict.fromkeys([y] + reads))
    outputs = [o.name for o in model.graph.output if o.name in made]
    return picked, inputs, outputs


def build_suffix(model: onnx.ModelProto, y: str, weights: dict[str, np.ndarray],
                 types: dict[str, tuple[int, int | None]]) -> Suffix:
    """The downstream part of `model` from value `y`, with `weights` (current values by name; any of the
    model's initializers) baked in where the suffix reads them."""
    picked, inputs, outputs = suffix_structure(model, y)
    if not picked:
        return Suffix(None, [y], [])
    nodes = [model.graph.node[i] for i in picked]
    read = {n for node in nodes for n in node_reads(node)}
    inits = []
    for t in model.graph.initializer:
        if t.name in read:
            inits.append(numpy_helper.from_array(np.asarray(weights[t.name]).astype(
                onnx.helper.tensor_dtype_to_np_dtype(t.data_type)), t.name) if t.name in weights else t)
    graph = helper.make_graph(nodes, "suffix", [_value(n, types) for n in inputs],
                              [o for o in model.graph.output if o.name in outputs], inits)
    sub = helper.make_model(graph, opset_imports=list(model.opset_import), ir_version=min(model.ir_version, MAX_IR))
    sub.functions.extend(model.functions)
    return Suffix(sub, inputs, outputs)


def _value(name: str, types: dict) -> onnx.ValueInfoProto:
    elem, rank = types.get(name, (onnx.TensorProto.FLOAT, None))
    shape = None if rank is None else [f"{name}_d{i}" for i in range(rank)]
    return helper.make_tensor_value_info(name, elem, shape)


def build_probe(model: onnx.ModelProto, exposed: list[str], extra: list[str],
                types: dict[str, tuple[int, int | None]]) -> onnx.ModelProto:
    """The model with `exposed` weights as inputs and the `extra` intermediate values as extra outputs."""
    probe = expose_weights(model, exposed)
    have = {o.name for o in probe.graph.output}
    graph_inputs = {v.name for v in probe.graph.input}
    for name in extra:
        if name not in have and name not in graph_inputs:
            probe.graph.output.append(_value(name, types))
            have.add(name)
    probe.ir_version = min(probe.ir_version, MAX_IR)
    return probe

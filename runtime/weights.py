"""Find a model's weights wherever they hide, describe them in a table, and put new values back.

`normalize` rewrites a model so every float weight is a main-graph initializer: `Constant` nodes
become initializers, and initializers of `If`/`Loop`/`Scan` subgraphs are hoisted to the main graph
(subgraphs may read outer-scope values, so the model computes the same thing). After that one
name is one weight, however many nodes share it, and a weight can be overridden by name.
"""
from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import numpy_helper

from evonnx.errors import ModelError
from evonnx.runtime.model_io import is_held

FLOAT_TYPES = {
    onnx.TensorProto.FLOAT: "float32",
    onnx.TensorProto.FLOAT16: "float16",
    onnx.TensorProto.DOUBLE: "float64",
    onnx.TensorProto.BFLOAT16: "bfloat16",
}
QUANTIZED_TYPES = {getattr(onnx.TensorProto, t) for t in ("INT8", "UINT8", "INT16", "UINT16", "INT4", "UINT4")
                   if hasattr(onnx.TensorProto, t)}
LOSSLESS_TYPES = {onnx.TensorProto.INT8, onnx.TensorProto.UINT8}  # already quantized: entropy-coded as they are
MIN_LOSSLESS_ELEMENTS = 256  # smaller ones (zero points, tiny tables) stay in the graph: a record's framing costs more
RECURRENT_OPS = ("LSTM", "GRU", "RNN")
TARGET_ROLES = ("conv", "matrix", "embedding")
NORM_OPS = {"BatchNormalization", "LayerNormalization", "InstanceNormalization", "GroupNormalization",
            "SimplifiedLayerNormalization", "SkipLayerNormalization", "RMSNormalization"}
QUANT_OPS = {"DequantizeLinear", "QuantizeLinear", "DynamicQuantizeLinear", "ConvInteger", "MatMulInteger",
             "QLinearConv", "QLinearMatMul", "QLinearAdd", "QLinearMul", "MatMulNBits", "QGemm", "QAttention",
             "DynamicQuantizeMatMul", "MatMulIntegerToFloat", "GatherBlockQuantized"}


# inputs whose values set shapes, sizes, axes, counts or control flow: a weight reaching one (through any
# chain of nodes but Shape/Size, which read only shapes) is kept exact and never fed as a graph input
SHAPE_SLOTS = {"Reshape": (1,), "Resize": (1, 2, 3), "Upsample": (1,), "Expand": (1,), "Tile": (1,),
               "Slice": (1, 2, 3, 4), "Pad": (1, 3), "ConstantOfShape": (0,), "Range": (0, 1, 2),
               "Squeeze": (1,), "Unsqueeze": (1,), "Split": (1,), "TopK": (1,), "OneHot": (1,),
               "NonMaxSuppression": (2, 3, 4), "CumSum": (1,), "If": (0,), "Loop": (0, 1),
               "RoiAlign": (2,), "CenterCropPad": (1,)}
SHAPE_SLOTS.update({op: (1,) for op in ("ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd",
                                         "ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp",
                                         "ReduceSumSquare")})
SHAPE_ONLY_OPS = {"Shape", "Size"}
RESAMPLING_OPS = ("Resize", "Upsample")


@dataclass(frozen=True)
class Consumer:
    node: str
    op_type: str
    input_index: int
    graph: str  # "" for the main graph, else the path of the subgraph ("If_0/then_branch")


@dataclass
class WeightInfo:
    """One float weight: what it is, who reads it, and how it may be compressed."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    consumers: list[Consumer] = field(default_factory=list)
    role: str = "other"  # conv | matrix | embedding | bias | norm | other
    channel_axis: int | None = None  # output-channel axis for per-channel schemes
    origin: str = "initializer"  # initializer | constant | subgraph:<path>

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def is_target(self) -> bool:
        return self.role in TARGET_ROLES and self.size > 1

    @property
    def op_types(self) -> list[str]:
        return sorted({c.op_type for c in self.consumers})


@dataclass
class Skipped:
    name: str
    reason: str


@dataclass
class WeightTable:
    weights: dict[str, WeightInfo]
    skipped: list[Skipped]
    lossless: list[str] = field(default_factory=list)  # int8/uint8 initializers stored losslessly as records
    resampled: list[str] = field(default_factory=list)  # float weights only a Resize reads: stored as fp16

    @property
    def targets(self) -> list[WeightInfo]:
        return [w for w in self.weights.values() if w.is_target]

    def __getitem__(self, name: str) -> WeightInfo:
        return self.weights[name]

    def __iter__(self) -> Iterator[WeightInfo]:
        return iter(self.weights.values())

    def __len__(self) -> int:
        return len(self.weights)


def _subgraphs(node: onnx.NodeProto) -> Iterator[tuple[str, onnx.GraphProto]]:
    for attr in node.attribute:
        if attr.type == onnx.AttributeProto.GRAPH:
            yield attr.name, attr.g
        elif attr.type == onnx.AttributeProto.GRAPHS:
            for i, g in enumerate(attr.graphs):
                yield f"{attr.name}[{i}]", g


def walk_graphs(graph: onnx.GraphProto, path: str = "") -> Iterator[tuple[str, onnx.GraphProto]]:
    """Yield (path, graph) for the graph and every nested subgraph."""
    yield path, graph
    for i, node in enumerate(graph.node):
        for attr_name, sub in _subgraphs(node):
            yield from walk_graphs(sub, f"{path}/{node.name or node.op_type + str(i)}/{attr_name}".lstrip("/"))


def normalize(model: onnx.ModelProto) -> tuple[onnx.ModelProto, dict[str, str]]:
    """Make every float weight of `model` a main-graph initializer, in place (a copy would double a large
    model's memory); return it and each weight's origin."""
    out = model
    main = out.graph
    taken = all_names(out)
    origins = {t.name: "initializer" for t in main.initializer}
    _drop_initializer_inputs(out)
    for path, graph in list(walk_graphs(main)):
        origins.update(_constants_to_initializers(graph, path))
        if graph is not main:
            origins.update(_hoist_initializers(graph, main, path, taken))
    return out, origins


def _drop_initializer_inputs(model: onnx.ModelProto) -> None:
    """Old exporters list initializers as graph inputs too (IR < 4); make them plain weights."""
    inits = {t.name for t in model.graph.initializer}
    if not any(v.name in inits for v in model.graph.input):
        return
    keep = [v for v in model.graph.input if v.name not in inits]
    del model.graph.input[:]
    model.graph.input.extend(keep)
    model.ir_version = max(model.ir_version, 4)


def _constants_to_initializers(graph: onnx.GraphProto, path: str) -> dict[str, str]:
    origins, keep = {}, []
    for node in graph.node:
        value = next((a.t for a in node.attribute if a.name == "value" and a.type == onnx.AttributeProto.TENSOR), None)
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx") and value is not None \
                and value.data_type in FLOAT_TYPES and len(value.dims) >= 1:
            tensor = onnx.TensorProto()
            tensor.CopyFrom(value)
            tensor.name = node.output[0]
            graph.initializer.append(tensor)
            origins[tensor.name] = "constant" if not path else f"constant:{path}"
        else:
            keep.append(node)
    if len(keep) != len(graph.node):
        del graph.node[:]
        graph.node.extend(keep)
    return origins


def _hoist_initializers(sub: onnx.GraphProto, main: onnx.GraphProto, path: str, taken: set[str]) -> dict[str, str]:
    origins, keep = {}, []
    for tensor in sub.initializer:
        if tensor.data_type not in FLOAT_TYPES:
            keep.append(tensor)
            continue
        new_name = tensor.name
        if new_name in taken:  # a main-graph name would shadow it: rename inside the subgraph
            new_name = fresh(f"{path}/{tensor.name}", taken)
            _rename_uses(sub, tensor.name, new_name)
        taken.add(new_name)
        hoisted = onnx.TensorProto()
        hoisted.CopyFrom(tensor)
        hoisted.name = new_name
        main.initializer.append(hoisted)
        origins[new_name] = f"subgraph:{path}"
    del sub.initializer[:]
    sub.initializer.extend(keep)
    return origins


def _rename_uses(graph: onnx.GraphProto, old: str, new: str) -> None:
    for _, g in walk_graphs(graph):
        for node in g.node:
            for i, name in enumerate(node.input):
                if name == old:
                    node.input[i] = new


def fresh(base: str, taken: set[str]) -> str:
    """`base`, or `base_1`, `base_2`, … : the first name not in `taken` (which it joins)."""
    name, k = base, 1
    while name in taken:
        name, k = f"{base}_{k}", k + 1
    taken.add(name)
    return name


def all_names(model: onnx.ModelProto) -> set[str]:
    """Every value and node name of the model, its subgraphs included (what a new name must avoid)."""
    names = {o.name for o in model.graph.output}
    for _, g in walk_graphs(model.graph):
        names.update(t.name for t in g.initializer)
        names.update(v.name for v in g.input)
        for node in g.node:
            names.update(node.output)
            names.add(node.name)
    return names


def weight_table(model: onnx.ModelProto, origins: dict[str, str] | None = None) -> WeightTable:
    """Describe every main-graph float initializer of a normalized model; list the already-quantized ones
    to store losslessly, and what is skipped and why."""
    consumers = _consumers(model)
    quant_fed = {name for name, cs in consumers.items() if any(c.op_type in QUANT_OPS for c in cs)}
    shape_fed = shape_feeding(model)
    weights, skipped, lossless, resampled = {}, [], [], []
    for tensor in model.graph.initializer:
        if tensor.data_type not in FLOAT_TYPES:
            if tensor.data_type in LOSSLESS_TYPES and math.prod(tensor.dims) >= MIN_LOSSLESS_ELEMENTS:
                lossless.append(tensor.name)
            elif tensor.data_type in QUANTIZED_TYPES:  # other integers (shapes, indices) are not weights
                kind = onnx.TensorProto.DataType.Name(tensor.data_type).lower()
                skipped.append(Skipped(tensor.name, f"{kind} tensor (already quantized)"))
            continue
        if tensor.name in quant_fed:
            skipped.append(Skipped(tensor.name, "parameter of a quantized operator"))
            continue
        if tensor.name in shape_fed:
            where, data = shape_fed[tensor.name]
            if data:
                resampled.append(tensor.name)
            skipped.append(Skipped(tensor.name, f"reaches {where}: " + ("stored as fp16" if data else "kept exact")))
            continue
        info = WeightInfo(tensor.name, tuple(int(d) for d in tensor.dims), FLOAT_TYPES[tensor.data_type],
                          consumers.get(tensor.name, []), origin=(origins or {}).get(tensor.name, "initializer"))
        info.role, info.channel_axis = _role(info, model)
        weights[tensor.name] = info
    return WeightTable(weights, skipped, lossless, resampled)


def shape_feeding(model: onnx.ModelProto) -> dict[str, tuple[str, bool]]:
    """Values whose contents reach a shape-sensitive input (SHAPE_SLOTS), each with the input it reaches and
    False; also, with True, the weights of a computation on weights alone that a Resize or Upsample resamples
    (a position embedding fitted to the input's grid: ONNX Runtime validates such a Resize only with constant
    data, so the search cannot feed them; they are data, not shapes, and the container rounds them to fp16).

    Backward walks from those inputs through their producers, stopping at Shape/Size (whose outputs depend
    on shapes only); subgraph nodes are walked too."""
    producers: dict[str, onnx.NodeProto] = {}
    pending: list[tuple[str, str]] = []
    resampled: list[tuple[str, str]] = []
    for _, g in walk_graphs(model.graph):
        for i, node in enumerate(g.node):
            for out in node.output:
                producers[out] = node
            if node.domain not in ("", "ai.onnx"):
                continue
            where = f"{node.op_type} {node.name or i}"
            pending += [(node.input[k], f"input {k} of {where}") for k in SHAPE_SLOTS.get(node.op_type, ())
                        if k < len(node.input) and node.input[k]]
            if node.op_type in RESAMPLING_OPS and node.input:
                resampled.append((node.input[0], f"the data of {where}"))
    graph_inputs = {v.name for v in model.graph.input}

    def closure(name: str) -> set[str]:
        seen, todo = set(), [name]
        while todo:
            value = todo.pop()
            if value in seen:
                continue
            seen.add(value)
            node = producers.get(value)
            if node is not None and node.op_type not in SHAPE_ONLY_OPS:
                todo.extend(n for n in node.input if n)
        return seen

    reached: dict[str, tuple[str, bool]] = {}
    while pending:  # one shared walk: a value reached once is not walked again
        name, where = pending.pop()
        if name in reached:
            continue
        reached[name] = (where, False)
        node = producers.get(name)
        if node is not None and node.op_type not in SHAPE_ONLY_OPS:
            pending.extend((n, where) for n in node.input if n)
    for name, where in resampled:
        values = closure(name)
        if not values & graph_inputs:  # weights only, resampled to the input's grid
            for value in values:
                reached.setdefault(value, (where, True))
    return reached


def _consumers(model: onnx.ModelProto) -> dict[str, list[Consumer]]:
    out: dict[str, list[Consumer]] = {}
    for path, g in walk_graphs(model.graph):
        for i, node in enumerate(g.node):
            for k, name in enumerate(node.input):
                if name:
                    out.setdefault(name, []).append(Consumer(node.name or f"{node.op_type}_{i}", node.op_type, k, path))
    return out


def _role(info: WeightInfo, model: onnx.ModelProto) -> tuple[str, int | None]:
    """Classify by the strongest consumer: a kernel or matrix anywhere makes the tensor a target."""
    ndim = len(info.shape)
    roles = []
    nodes = {n.name or f"{n.op_type}_{i}": n for path, g in walk_graphs(model.graph) for i, n in enumerate(g.node)}
    for c in info.consumers:
        node = nodes.get(c.node)
        if c.op_type == "Conv" and c.input_index == 1 and ndim >= 3:
            roles.append(("conv", 0))
        elif c.op_type == "ConvTranspose" and c.input_index == 1 and ndim >= 3:
            roles.append(("conv", 1))
        elif c.op_type == "Gemm" and c.input_index in (0, 1) and ndim == 2:
            trans = _int_attr(node, "transB" if c.input_index == 1 else "transA")
            roles.append(("matrix", (0 if trans else 1) if c.input_index == 1 else (1 if trans else 0)))
        elif c.op_type == "MatMul" and ndim >= 2:
            roles.append(("matrix", ndim - 1 if c.input_index == 1 else ndim - 2))
        elif c.op_type == "Gather" and c.input_index == 0 and ndim == 2:
            roles.append(("embedding", 0))
        elif c.op_type in RECURRENT_OPS and c.input_index in (1, 2) and ndim == 3:
            roles.append(("matrix", 1))  # W / R: [directions, gates x hidden, inputs]; rows are output units
        elif c.op_type in RECURRENT_OPS and c.input_index == 3:
            roles.append(("bias", None))
        elif c.op_type in NORM_OPS:
            roles.append(("norm", None))
        elif ndim <= 1 and (c.op_type in ("Add", "Sub") or (c.op_type in ("Conv", "ConvTranspose", "Gemm")
                                                         and c.input_index == 2)):
            roles.append(("bias", None))
    for wanted in ("conv", "matrix", "embedding", "norm", "bias"):
        for role, axis in roles:
            if role == wanted:
                return role, axis
    return "other", None


def _int_attr(node: onnx.NodeProto | None, name: str) -> int:
    if node is None:
        return 0
    return next((a.i for a in node.attribute if a.name == name), 0)


def read_weights(model: onnx.ModelProto, names: list[str] | None = None,
                 held: Mapping[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """Main-graph initializers as numpy arrays (all float ones, or those named); `held`: the values of those
    held outside the graph (model_io.weight_free), which the graph only references."""
    wanted = set(names) if names is not None else None
    out = {}
    for tensor in model.graph.initializer:
        if (wanted is None and tensor.data_type in FLOAT_TYPES) or (wanted is not None and tensor.name in wanted):
            if is_held(tensor):
                if held is None or tensor.name not in held:
                    raise ModelError(f"weight {tensor.name!r} is held outside the graph and no value was given")
                out[tensor.name] = held[tensor.name]
            else:
                out[tensor.name] = numpy_helper.to_array(tensor)
    if wanted is not None and wanted - out.keys():
        raise ModelError(f"weights not found in the model: {sorted(wanted - out.keys())[:5]}")
    return out


def set_weights(model: onnx.ModelProto, arrays: dict[str, np.ndarray], add_missing: bool = False) -> onnx.ModelProto:
    """Return a copy whose main-graph initializers named in `arrays` hold the new values (dtype and shape kept)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    remaining = dict(arrays)
    for i, tensor in enumerate(out.graph.initializer):
        if tensor.name in remaining:
            arr = np.asarray(remaining.pop(tensor.name))
            if tuple(arr.shape) != tuple(tensor.dims):
                raise ModelError(f"weight {tensor.name!r}: new shape {arr.shape} != {tuple(tensor.dims)}")
            out.graph.initializer[i].CopyFrom(_to_tensor(arr, tensor.name, tensor.data_type))
    if remaining and not add_missing:
        raise ModelError(f"weights not found in the model: {sorted(remaining)[:5]}")
    for name, arr in remaining.items():
        out.graph.initializer.append(numpy_helper.from_array(np.asarray(arr), name))
    return out


def _to_tensor(arr: np.ndarray, name: str, data_type: int) -> onnx.TensorProto:
    np_type = onnx.helper.tensor_dtype_to_np_dtype(data_type)
    return numpy_helper.from_array(np.asarray(arr, dtype=np_type, order="C"), name)  # keeps 0-d shapes

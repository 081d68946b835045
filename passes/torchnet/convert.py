"""ONNX graph -> torch module whose parameters are the graph's weights, and back by name.

`OnnxModule(model, trainable)` runs the graph node by node with the functions of `ops.py`. The float
initializers named in `trainable` are `nn.Parameter`s, every other initializer (BatchNorm statistics,
shape tensors, frozen weights) a buffer. `transforms[name]` (set by a pass) maps a weight's parameter to
the value the graph uses, e.g. a keep-mask product or a straight-through quantizer; `taps[value]` likewise
maps a node output to what later nodes read (a probe added to a Gather's rows). `weights()` returns
the trained arrays under their ONNX names, in their original dtype; nothing else changes the graph.
A graph whose inputs fix their batch (axis 0, e.g. batch 1 baked into its Reshapes) runs a larger batch as
chunks of that size, vectorized over the chunks by `torch.func.vmap` (a loop over them where an op does not
support it), its outputs joined on axis 0.
"""
from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from torch import nn

from evonnx.errors import EvonnxError
from evonnx.passes.torchnet.ops import MULTI_OUTPUT, OPS
from evonnx.runtime.model_io import default_opset
from evonnx.runtime.weights import read_weights

DEFAULT_DOMAINS = ("", "ai.onnx")
log = logging.getLogger(__name__)


def _key(node: onnx.NodeProto) -> str:
    """The node's key in OPS: its op_type, prefixed by its domain outside the default one."""
    return node.op_type if node.domain in DEFAULT_DOMAINS else f"{node.domain}.{node.op_type}"


def unsupported(model: onnx.ModelProto) -> dict[str, str]:
    """{op_type: first node name} of every node the converter cannot run."""
    bad: dict[str, str] = {}
    for i, node in enumerate(model.graph.node):
        key = _key(node)
        multi = sum(1 for o in node.output if o) > 1 and key not in MULTI_OUTPUT
        if (key not in OPS and key != "Constant") or multi:
            bad.setdefault(key + (" (extra outputs)" if multi and key in OPS else ""), node.name or f"#{i}")
    return bad


def check_supported(model: onnx.ModelProto, label: str = "model") -> None:
    bad = unsupported(model)
    if bad:
        listed = ", ".join(f"{op} (node {name!r})" for op, name in sorted(bad.items()))
        raise EvonnxError(f"{label}: cannot convert to torch, unsupported op(s): {listed}; gradient passes "
                          f"need a graph of {', '.join(sorted(OPS))}")


def _attr(a: onnx.AttributeProto):
    if a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS):
        raise EvonnxError(f"torch conversion: subgraph attribute {a.name!r} is not supported")
    v = onnx.helper.get_attribute_value(a)
    if isinstance(v, bytes):
        return v.decode()
    if isinstance(v, onnx.TensorProto):
        return torch.from_numpy(np.array(numpy_helper.to_array(v)))
    return v


def _fixed_batch(graph: onnx.GraphProto, names: list[str]) -> int | None:
    """The batch size every input fixes on axis 0 (None when any input leaves it dynamic or they differ)."""
    sizes = set()
    for i in graph.input:
        if i.name in names:
            dims = i.type.tensor_type.shape.dim
            sizes.add(dims[0].dim_value if dims and dims[0].HasField("dim_value") else None)
    return sizes.pop() if len(sizes) == 1 and None not in sizes and 0 not in sizes else None


def _constant(node: onnx.NodeProto) -> torch.Tensor:
    attrs = {a.name: _attr(a) for a in node.attribute}
    if "value" in attrs:
        return attrs["value"]
    for key, dtype in (("value_float", torch.float32), ("value_floats", torch.float32), ("value_int", torch.int64),
                       ("value_ints", torch.int64)):
        if key in attrs:
            return torch.tensor(attrs[key], dtype=dtype)
    raise EvonnxError(f"torch conversion: Constant {node.name!r} with {sorted(attrs)} is not supported")


class OnnxModule(nn.Module):
    """The ONNX graph as a torch module: forward(*inputs) -> list of outputs (graph order). `trainable`: the
    initializers that become parameters; `values`: initializer values in place of the graph's (required for
    those it holds outside, passes.state.ModelState.held)."""

    def __init__(self, model: onnx.ModelProto, trainable=(), values: dict[str, np.ndarray] | None = None,
                 label: str = "model"):
        super().__init__()
        check_supported(model, label)
        graph, opset = model.graph, default_opset(model)
        values = values or {}
        inits = read_weights(model, [t.name for t in graph.initializer], held=values)
        inits.update(values)
        self.input_names = [i.name for i in graph.input if i.name not in inits]
        self.batch = _fixed_batch(graph, self.input_names)
        self.vectorize = True  # a fixed batch's chunks through vmap, until an op refuses it
        self.output_names = [o.name for o in graph.output]
        self.params = nn.ParameterDict()
        self._keys: dict[str, str] = {}
        self._buffers_by_name: dict[str, torch.Tensor] = {}
        trainable = set(trainable)
        for i, (name, array) in enumerate(inits.items()):
            tensor = torch.from_numpy(np.array(array, copy=True))
            if name in trainable:
                if not tensor.is_floating_point():
                    raise EvonnxError(f"{label}: weight {name!r} is {array.dtype}, not float: it cannot be trained")
                self._keys[name] = f"w{i}"
                self.params[f"w{i}"] = nn.Parameter(tensor)
            else:
                self.register_buffer(f"b{i}", tensor, persistent=False)
                self._buffers_by_name[name] = f"b{i}"
        self.transforms: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {}
        self.taps: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {}  # node output -> what later nodes read
        self.nodes = []
        for node in graph.node:
            if node.op_type == "Constant":
                key = f"c{len(self._buffers_by_name)}_{len(self.nodes)}"
                self.register_buffer(key, _constant(node), persistent=False)
                self._buffers_by_name[node.output[0]] = key
                continue
            key = _key(node)
            attrs = {a.name: _attr(a) for a in node.attribute}
            if key in MULTI_OUTPUT:
                attrs["_outputs"] = len(node.output)
            self.nodes.append((key, OPS[key], list(node.input), list(node.output), attrs, opset))

    @property
    def device(self) -> torch.device:
        """Where the module's tensors live (the CPU for a graph without any)."""
        return next(iter(self.buffers()), next(iter(self.parameters()), torch.empty(0))).device

    @property
    def weight_names(self) -> list[str]:
        return list(self._keys)

    def parameter(self, name: str) -> nn.Parameter:
        return self.params[self._keys[name]]

    def value(self, name: str) -> torch.Tensor:
        """What the graph reads for an initializer: its parameter through its transform, or its buffer."""
        if name in self._keys:
            t = self.params[self._keys[name]]
            fn = self.transforms.get(name)
            return fn(t) if fn is not None else t
        return getattr(self, self._buffers_by_name[name])

    def forward(self, *inputs: torch.Tensor) -> list[torch.Tensor]:
        if len(inputs) != len(self.input_names):
            raise EvonnxError(f"expected {len(self.input_names)} inputs {self.input_names}, got {len(inputs)}")
        b = self.batch  # None for scalar or dynamic inputs
        n = b if b is None else len(inputs[0])
        if n == b:
            return self._run(inputs)
        if n % b:
            raise EvonnxError(f"the graph fixes its batch at {b}: {n} samples cannot be run in such chunks")
        if self.vectorize:
            try:
                outs = torch.func.vmap(lambda *xs: tuple(self._run(xs)))(
                    *[x.reshape(n // b, b, *x.shape[1:]) for x in inputs])
                return [o.reshape(n, *o.shape[2:]) for o in outs]
            except (RuntimeError, NotImplementedError, ValueError) as exc:
                log.debug(f"torch.func.vmap cannot run the graph ({exc}); looping over chunks of {b}")
                self.vectorize = False
        chunks = [self._run([x[i:i + b] for x in inputs]) for i in range(0, n, b)]
        return [torch.cat(outs) for outs in zip(*chunks)]

    def _run(self, inputs) -> list[torch.Tensor]:
        env = dict(zip(self.input_names, inputs))
        for op_type, fn, names, outs, attrs, opset in self.nodes:
            args = [None if not n else env[n] if n in env else self.value(n) for n in names]
            while args and args[-1] is None:
                args.pop()
            y = fn(*args, **attrs, _opset=opset)
            env.update(zip(outs, y) if op_type in MULTI_OUTPUT else [(outs[0], y)])
            for out in outs:
                if out in self.taps:
                    env[out] = self.taps[out](env[out])
        return [env[n] if n in env else self.value(n) for n in self.output_names]

    def weights(self) -> dict[str, np.ndarray]:
        """Trained weights as numpy arrays under their ONNX names (the values the graph uses)."""
        with torch.no_grad():
            return {n: self.value(n).detach().cpu().numpy().copy() for n in self._keys}

    def load(self, values: dict[str, np.ndarray]) -> None:
        with torch.no_grad():
            for n, v in values.items():
                self.parameter(n).copy_(torch.from_numpy(np.asarray(v)))


def run_numpy(module: OnnxModule, inputs: dict[str, np.ndarray], batch: int = 1024) -> list[np.ndarray]:
    """Forward a dict of numpy inputs in batches without gradients."""
    n = len(next(iter(inputs.values())))
    device = module.device
    outs: list[list[np.ndarray]] = []
    with torch.no_grad():
        for i in range(0, max(n, 1), batch):
            ys = module(*[torch.from_numpy(np.ascontiguousarray(inputs[k][i:i + batch])).to(device)
                          for k in module.input_names])
            outs.append([y.cpu().numpy() for y in ys])
    return [np.concatenate([o[j] for o in outs]) for j in range(len(module.output_names))]

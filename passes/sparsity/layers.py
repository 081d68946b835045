"""A prunable weight seen as a matrix layer: Y_flat[rows, out] = X_mat[rows, K] @ W_mat[out, K].T + b.

Gemm (weight as B), MatMul (2-D weight as the right operand) and Conv (group 1, any spatial rank) get
this "fast" view, which gives re-fitting and delta evaluation. Other weights (embeddings, tied weights,
grouped or transposed convs) are still prunable but are evaluated by full forward passes.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from numpy.lib.stride_tricks import sliding_window_view

from evonnx.passes.state import ModelState


@dataclass
class Layer:
    weight: str
    shape: tuple[int, ...]
    node: onnx.NodeProto | None = None  # the single consumer node (None: no fast path)
    kind: str = "other"  # gemm | matmul | conv | table (a Gather's [rows, features]: passes/quant/tables.py) | other
    x: str = ""  # the node's activation input
    y: str = ""  # the node's output
    bias: str | None = None  # a 1-D bias initializer read only by this node (re-fitted with W)
    bias_scale: float = 1.0  # Gemm beta
    alpha: float = 1.0  # Gemm alpha
    trans_a: bool = False
    trans_w: bool = False  # True when W is stored [out, K] (Gemm transB=1)
    conv: dict | None = None  # kernel, strides, pads, dilations
    relu_out: bool = False  # Y is read only by a Relu (and is no graph output): only max(Y, 0) matters

    @property
    def fast(self) -> bool:
        return self.kind != "other"

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))

    @property
    def out(self) -> int:
        return self.mat_shape[0]

    @property
    def mat_shape(self) -> tuple[int, int]:
        if self.kind in ("conv", "table"):
            return self.shape[0], int(np.prod(self.shape[1:]))
        if self.kind in ("gemm", "matmul"):
            return (self.shape[0], self.shape[1]) if self.trans_w else (self.shape[1], self.shape[0])
        return 1, self.size

    @property
    def row_axis(self) -> int:
        """The weight's axis that becomes the rows (outputs) of `to_mat`."""
        return 1 if self.kind in ("gemm", "matmul") and not self.trans_w else 0

    def to_mat(self, w: np.ndarray) -> np.ndarray:
        """The weight as [out, K] (a view or a transposed copy)."""
        if self.kind in ("conv", "table"):
            return w.reshape(self.shape[0], -1)
        if self.kind in ("gemm", "matmul"):
            return w if self.trans_w else w.T
        return w.reshape(1, -1)

    def from_mat(self, m: np.ndarray) -> np.ndarray:
        if self.kind in ("gemm", "matmul") and not self.trans_w:
            return np.ascontiguousarray(m.T)
        return np.ascontiguousarray(m).reshape(self.shape)

    def x_mat(self, x: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
        """Input activations as [rows, K] (im2col for Conv); `rows` picks a subset of the rows."""
        if self.kind == "conv":
            return _im2col(x, self.conv, rows)
        if self.kind == "gemm" and self.trans_a:
            x = x.T
        x = x.reshape(-1, x.shape[-1])
        x = x if rows is None else x[rows]
        return x * np.float32(self.alpha) if self.alpha != 1.0 else x

    def x_cols(self, x: np.ndarray) -> np.ndarray:
        """`x_mat(x)` transposed, [K, rows], contiguous: one copy of the patches, not two."""
        if self.kind != "conv":
            return np.ascontiguousarray(self.x_mat(x).T)
        win = _windows(x, self.conv)
        lead = win.ndim - 1 - len(self.conv["kernel"])  # N and the output positions
        return np.ascontiguousarray(np.moveaxis(win, tuple(range(lead)), tuple(range(-lead, 0)))).reshape(-1, int(
            np.prod(win.shape[:lead])))

    def col_norms(self, x: np.ndarray, keep: np.ndarray | None = None) -> np.ndarray:
        """Each column's norm over the rows of `x_mat(x)` (`keep`: a bool over the rows that count; a convolution's
        all count), float64, without a convolution's patches: its squared input, summed over the samples, summed
        over the windows."""
        if self.kind == "conv":
            win = _windows(np.square(x, dtype=np.float64).sum(axis=0, keepdims=True), self.conv)
            return np.sqrt(win.sum(axis=tuple(range(win.ndim - 1 - len(self.conv["kernel"]))))).reshape(-1)
        xm = self.x_mat(x)
        xm = xm if keep is None else xm[keep]
        return np.sqrt(np.einsum("rk,rk->k", xm, xm, dtype=np.float64))

    def n_rows(self, x_shape: tuple[int, ...]) -> int:
        if self.kind == "conv":
            return x_shape[0] * int(np.prod(_out_spatial(x_shape, self.conv)))
        if self.kind == "gemm" and self.trans_a:
            return x_shape[-1]
        return int(np.prod(x_shape[:-1]))

    def y_flat(self, y: np.ndarray) -> np.ndarray:
        """Layer output as [rows, out] (channels last for Conv)."""
        if self.kind == "conv":
            return np.moveaxis(y, 1, -1).reshape(-1, y.shape[1])
        return y.reshape(-1, y.shape[-1])

    def y_native(self, flat: np.ndarray, like_shape: tuple[int, ...]) -> np.ndarray:
        """Inverse of y_flat for a stack: flat [..., rows, out] -> [..., *like_shape]."""
        lead = flat.shape[:-2]
        if self.kind == "conv":
            n, c, *sp = like_shape
            return np.moveaxis(flat.reshape(*lead, n, *sp, c), -1, len(lead) + 1)
        return flat.reshape(*lead, *like_shape)


def analyse(state: ModelState, names: list[str]) -> list[Layer]:
    """Layer views of the named weights, in graph order of their consumers."""
    graph = state.model.graph
    inits = {t.name: t for t in graph.initializer}
    readers: dict[str, list[str]] = {}  # name -> op types of the main-graph nodes reading it
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node.op_type)
    for name in _subgraph_reads(graph) | {o.name for o in graph.output}:
        readers.setdefault(name, []).append("")  # read elsewhere: counts, but is no known op
    order = {}
    layers = []
    for name in names:
        info = state.table[name]
        layer = Layer(name, tuple(info.shape))
        main = [c for c in info.consumers if c.graph == ""]
        if len(info.consumers) == 1 and len(main) == 1:
            node = next(n for i, n in enumerate(graph.node) if (n.name or f"{n.op_type}_{i}") == main[0].node)
            _fill(layer, node, main[0].input_index, inits, readers)
            order[name] = list(graph.node).index(node)
        layers.append(layer)
    return sorted(layers, key=lambda l: order.get(l.weight, 1 << 30))


def _subgraph_reads(graph: onnx.GraphProto) -> set[str]:
    """Names read by nodes inside the subgraphs (If/Loop/Scan bodies) of `graph`, at any depth."""
    out: set[str] = set()
    for node in graph.node:
        for attr in node.attribute:
            for sub in [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs):
                out |= {i for n in sub.node for i in n.input} | _subgraph_reads(sub)
    return out


def _attrs(node: onnx.NodeProto) -> dict:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _fill(layer: Layer, node: onnx.NodeProto, index: int, inits: dict, readers: dict) -> None:
    a = _attrs(node)
    ndim = len(layer.shape)
    if node.op_type == "Gemm" and index == 1 and ndim == 2:
        layer.kind, layer.trans_w = "gemm", bool(a.get("transB", 0))
        layer.trans_a, layer.alpha = bool(a.get("transA", 0)), float(a.get("alpha", 1.0))
        layer.bias_scale = float(a.get("beta", 1.0))
        bias = node.input[2] if len(node.input) > 2 else ""
    elif node.op_type == "MatMul" and index == 1 and ndim == 2:
        layer.kind, bias = "matmul", ""
    elif node.op_type == "Conv" and index == 1 and ndim >= 3 and int(a.get("group", 1)) == 1:
        spatial = ndim - 2
        pads = list(a.get("pads", [0] * 2 * spatial))
        auto_pad = a.get("auto_pad", b"NOTSET")
        auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
        layer.kind = "conv"
        layer.conv = {"kernel": list(layer.shape[2:]), "strides": list(a.get("strides", [1] * spatial)),
                      "dilations": list(a.get("dilations", [1] * spatial)), "pads": pads, "auto_pad": auto_pad}
        bias = node.input[2] if len(node.input) > 2 else ""
    else:
        return
    layer.node, layer.x, layer.y = node, node.input[0], node.output[0]
    layer.relu_out = readers.get(layer.y) == ["Relu"]
    out = layer.mat_shape[0]
    if bias and bias in inits and len(readers.get(bias, [])) == 1 and tuple(inits[bias].dims) == (out,):
        layer.bias = bias


def _resolve_pads(x_shape, conv) -> list[int]:
    spatial = len(conv["kernel"])
    if conv["auto_pad"] in ("NOTSET", "", "VALID"):
        return conv["pads"] if conv["auto_pad"] != "VALID" else [0] * 2 * spatial
    pads_b, pads_e = [], []
    for d in range(spatial):
        size, s = x_shape[2 + d], conv["strides"][d]
        eff = (conv["kernel"][d] - 1) * conv["dilations"][d] + 1
        total = max((-(-size // s) - 1) * s + eff - size, 0)
        small, big = total // 2, total - total // 2
        pads_b.append(small if conv["auto_pad"] == "SAME_UPPER" else big)
        pads_e.append(big if conv["auto_pad"] == "SAME_UPPER" else small)
    return pads_b + pads_e


def _out_spatial(x_shape, conv) -> list[int]:
    spatial = len(conv["kernel"])
    pads = _resolve_pads(x_shape, conv)
    out = []
    for d in range(spatial):
        eff = (conv["kernel"][d] - 1) * conv["dilations"][d] + 1
        out.append((x_shape[2 + d] + pads[d] + pads[spatial + d] - eff) // conv["strides"][d] + 1)
    return out


def _im2col(x: np.ndarray, conv: dict, rows: np.ndarray | None) -> np.ndarray:
    """Patches [rows, C*prod(kernel)] in the order of W.reshape(Co, -1); rows index (n, *out_spatial)."""
    win = _windows(x, conv)
    spatial = len(conv["kernel"])
    k = int(np.prod(win.shape[1 + spatial:]))
    if rows is None:
        return win.reshape(-1, k)
    idx = np.unravel_index(rows, win.shape[:1 + spatial])
    return win[idx].reshape(len(rows), k)


def _windows(x: np.ndarray, conv: dict) -> np.ndarray:
    """The convolution's input patches as a view [N, *out_spatial, C, *kernel]."""
    spatial = len(conv["kernel"])
    pads = _resolve_pads(x.shape, conv)
    xp = np.pad(x, [(0, 0), (0, 0)] + [(pads[d], pads[spatial + d]) for d in range(spatial)])
    eff = [(k - 1) * dl + 1 for k, dl in zip(conv["kernel"], conv["dilations"])]
    win = sliding_window_view(xp, eff, axis=tuple(range(2, 2 + spatial)))  # [N, C, *pos, *eff]
    win = win[(slice(None), slice(None)) + tuple(slice(None, None, s) for s in conv["strides"])
              + tuple(slice(None, None, dl) for dl in conv["dilations"])]
    out_sp = _out_spatial(x.shape, conv)
    win = win[(slice(None), slice(None)) + tuple(slice(0, o) for o in out_sp)]
    return np.moveaxis(win, 1, 1 + spatial)  # [N, *pos, C, *kernel]

"""ONNX operators as torch functions: `OPS[op_type](inputs, attrs, opset) -> output(s)`.

Inference semantics of the default domain (opsets 11-21), and a few com.microsoft fusions of ONNX
Runtime's optimizer keyed "com.microsoft.<op>". Inputs are tensors (None for an omitted optional input);
integer tensors (shapes, indices) are int64 tensors like any other, so shape subgraphs follow the input's
dimensions. Attributes are plain Python values. Ops in MULTI_OUTPUT return a tuple, one per node output,
and get the node's output count as `_outputs`. An op whose attributes fall outside what is implemented
raises EvonnxError naming it, so a graph is never run with wrong semantics.
"""
from __future__ import annotations

import functools
import math

import onnx
import torch
import torch.nn.functional as F

from evonnx.errors import EvonnxError

OPS: dict = {}
MULTI_OUTPUT: set = set()


def op(*names, multi=False):
    def deco(fn):
        for n in names:
            OPS[n] = fn
            if multi:
                MULTI_OUTPUT.add(n)
        return fn
    return deco


def _refuse(op_type: str, why: str):
    raise EvonnxError(f"torch conversion: {op_type} with {why} is not supported")


def _ints(t) -> list[int] | None:
    """An int list from a tensor input or a list attribute (older opsets give axes as attributes)."""
    if t is None or isinstance(t, (list, tuple)):
        return None if t is None else [int(v) for v in t]
    return [int(v) for v in t.reshape(-1).tolist()]


def _spatial_pads(op_type, size, kernel, strides, dilations, auto_pad, pads):
    """(begin, end) padding per spatial dim, auto_pad resolved as ONNX defines it."""
    nd = len(kernel)
    if auto_pad in ("", "NOTSET"):
        pads = pads or [0] * 2 * nd
        return list(pads[:nd]), list(pads[nd:])
    if auto_pad == "VALID":
        return [0] * nd, [0] * nd
    if auto_pad not in ("SAME_UPPER", "SAME_LOWER"):
        _refuse(op_type, f"auto_pad={auto_pad}")
    begin, end = [], []
    for n, k, s, d in zip(size, kernel, strides, dilations):
        total = max(0, (math.ceil(n / s) - 1) * s + (k - 1) * d + 1 - n)
        small = total // 2
        begin.append(small if auto_pad == "SAME_UPPER" else total - small)
        end.append(total - begin[-1])
    return begin, end


def _pad_arg(begin, end):
    """F.pad's argument: last dimension first."""
    out = []
    for b, e in zip(reversed(begin), reversed(end)):
        out += [b, e]
    return out


@op("Conv")
def conv(x, w, b=None, *, auto_pad="NOTSET", dilations=None, group=1, kernel_shape=None, pads=None, strides=None,
         _opset=17):
    nd = w.dim() - 2
    strides, dilations = strides or [1] * nd, dilations or [1] * nd
    begin, end = _spatial_pads("Conv", x.shape[2:], list(w.shape[2:]), strides, dilations, auto_pad, pads)
    if begin != end:
        x, begin = F.pad(x, _pad_arg(begin, end)), [0] * nd
    fn = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}.get(nd) or _refuse("Conv", f"{nd} spatial dims")
    return fn(x, w, b, strides, begin, dilations, group)


@op("ConvTranspose")
def conv_transpose(x, w, b=None, *, auto_pad="NOTSET", dilations=None, group=1, kernel_shape=None,
                   output_padding=None, output_shape=None, pads=None, strides=None, _opset=17):
    nd = w.dim() - 2
    strides, dilations = strides or [1] * nd, dilations or [1] * nd
    out_pad = output_padding or [0] * nd
    kernel = list(w.shape[2:])
    size = list(x.shape[2:])
    if output_shape is not None or auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        target = list(output_shape)[-nd:] if output_shape is not None else [n * s for n, s in zip(size, strides)]
        total = [s * (n - 1) + p + (k - 1) * d + 1 - t
                 for n, s, p, k, d, t in zip(size, strides, out_pad, kernel, dilations, target)]
        if auto_pad == "SAME_UPPER":
            begin, end = [t // 2 for t in total], [t - t // 2 for t in total]
        else:
            begin, end = [t - t // 2 for t in total], [t // 2 for t in total]
    elif auto_pad == "VALID":
        begin, end = [0] * nd, [0] * nd
    else:
        pads = pads or [0] * 2 * nd
        begin, end = list(pads[:nd]), list(pads[nd:])
    fn = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}.get(nd)
    if fn is None or min(begin + end) < 0:
        _refuse("ConvTranspose", f"{nd} spatial dims, pads {begin + end}")
    y = fn(x, w, None, strides, 0, 0, group, dilations)  # full output; output_padding adds untouched rows
    if any(out_pad):
        y = F.pad(y, _pad_arg([0] * nd, out_pad))
    crop = tuple(slice(bg, y.shape[2 + i] - e) for i, (bg, e) in enumerate(zip(begin, end)))
    y = y[(slice(None), slice(None)) + crop]
    return y if b is None else y + b.reshape([1, -1] + [1] * nd)


@op("Gemm")
def gemm(a, b, c=None, *, alpha=1.0, beta=1.0, transA=0, transB=0, _opset=17):
    y = (a.t() if transA else a) @ (b.t() if transB else b)
    if alpha != 1.0:
        y = y * alpha
    if c is not None:
        y = y + (c if beta == 1.0 else c * beta)
    return y


@op("MatMul")
def matmul(a, b, _opset=17):
    return torch.matmul(a, b)


@op("BatchNormalization")
def batch_norm(x, scale, bias, mean, var, *, epsilon=1e-5, momentum=0.9, training_mode=0, spatial=1, _opset=17):
    if training_mode:
        _refuse("BatchNormalization", "training_mode=1")
    return F.batch_norm(x, mean, var, scale, bias, False, 0.0, epsilon)


def _pool_prep(op_type, x, kernel_shape, strides, pads, dilations, auto_pad, fill):
    nd = len(kernel_shape)
    strides, dilations = strides or [1] * nd, dilations or [1] * nd
    begin, end = _spatial_pads(op_type, x.shape[2:], kernel_shape, strides, dilations, auto_pad, pads)
    native = begin == end and all(p <= k // 2 for p, k in zip(begin, kernel_shape))
    if not native:
        x, begin = F.pad(x, _pad_arg(begin, end), value=fill), [0] * nd
    return x, strides, dilations, begin


@op("MaxPool")
def max_pool(x, *, kernel_shape, strides=None, pads=None, dilations=None, ceil_mode=0, auto_pad="NOTSET",
             storage_order=0, _opset=17):
    x, strides, dilations, padding = _pool_prep("MaxPool", x, kernel_shape, strides, pads, dilations, auto_pad,
                                                float("-inf"))
    fn = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}[len(kernel_shape)]
    return fn(x, kernel_shape, strides, padding, dilations, bool(ceil_mode))


@op("AveragePool")
def avg_pool(x, *, kernel_shape, strides=None, pads=None, dilations=None, ceil_mode=0, auto_pad="NOTSET",
             count_include_pad=0, _opset=17):
    if dilations and any(d != 1 for d in dilations):
        _refuse("AveragePool", f"dilations={dilations}")
    nd = len(kernel_shape)
    fn = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}[nd]
    strides = strides or [1] * nd
    begin, end = _spatial_pads("AveragePool", x.shape[2:], kernel_shape, strides, [1] * nd, auto_pad, pads)
    if begin == end and all(p <= k // 2 for p, k in zip(begin, kernel_shape)):
        return fn(x, kernel_shape, strides, begin, bool(ceil_mode), bool(count_include_pad))
    if ceil_mode:
        _refuse("AveragePool", "asymmetric pads and ceil_mode")
    padded = F.pad(x, _pad_arg(begin, end))
    total = fn(padded, kernel_shape, strides, 0)
    if count_include_pad:
        return total
    ones = F.pad(torch.ones_like(x[:1, :1]), _pad_arg(begin, end))
    return total / fn(ones, kernel_shape, strides, 0)


@op("GlobalAveragePool")
def global_avg_pool(x, _opset=17):
    return x.mean(dim=tuple(range(2, x.dim())), keepdim=True)


@op("GlobalMaxPool")
def global_max_pool(x, _opset=17):
    return x.amax(dim=tuple(range(2, x.dim())), keepdim=True)


@op("Relu")
def relu(x, _opset=17):
    return torch.relu(x)


@op("Sigmoid")
def sigmoid(x, _opset=17):
    return torch.sigmoid(x)


@op("Tanh")
def tanh(x, _opset=17):
    return torch.tanh(x)


@op("LeakyRelu")
def leaky_relu(x, *, alpha=0.01, _opset=17):
    return F.leaky_relu(x, alpha)


@op("Elu")
def elu(x, *, alpha=1.0, _opset=17):
    return F.elu(x, alpha)


@op("Gelu")
def gelu(x, *, approximate="none", _opset=20):
    return F.gelu(x, approximate=approximate)


@op("HardSigmoid")
def hard_sigmoid(x, *, alpha=0.2, beta=0.5, _opset=17):
    return torch.clamp(x * alpha + beta, 0.0, 1.0)


@op("HardSwish")
def hard_swish(x, _opset=17):
    return F.hardswish(x)


@op("Clip")
def clip(x, lo=None, hi=None, *, min=None, max=None, _opset=17):  # noqa: A002 - ONNX attribute names
    lo = min if lo is None else lo
    hi = max if hi is None else hi
    return torch.clamp(x, lo, hi)


def _elementwise(name, fn):
    OPS[name] = lambda *xs, _opset=17: fn(*xs)


for _name, _fn in {"Erf": torch.erf, "Sqrt": torch.sqrt, "Exp": torch.exp, "Log": torch.log, "Neg": torch.neg,
                   "Abs": torch.abs, "Reciprocal": torch.reciprocal, "Floor": torch.floor, "Ceil": torch.ceil,
                   "Sign": torch.sign, "IsNaN": torch.isnan, "Not": torch.logical_not, "And": torch.logical_and,
                   "Or": torch.logical_or, "Xor": torch.logical_xor, "Equal": torch.eq, "Less": torch.lt,
                   "LessOrEqual": torch.le, "Greater": torch.gt, "GreaterOrEqual": torch.ge,
                   "Where": torch.where}.items():
    _elementwise(_name, _fn)
for _name, _fn in {"Max": torch.maximum, "Min": torch.minimum, "Sum": torch.add}.items():
    _elementwise(_name, lambda *xs, fn=_fn: functools.reduce(fn, xs))
OPS["Mean"] = lambda *xs, _opset=17: OPS["Sum"](*xs) / len(xs)


@op("Identity")
def identity(x, _opset=17):
    return x


@op("Dropout")
def dropout(x, ratio=None, training_mode=None, *, seed=0, _opset=17):
    return x


@op("Add")
def add(a, b, _opset=17):
    return a + b


@op("Sub")
def sub(a, b, _opset=17):
    return a - b


@op("Mul")
def mul(a, b, _opset=17):
    return a * b


@op("Div")
def div(a, b, _opset=17):
    if not a.is_floating_point():
        return torch.div(a, b, rounding_mode="trunc")
    return a / b


@op("Pow")
def pow_(a, b, _opset=17):
    return torch.pow(a, b)


def _softmax_axis(x, axis, opset):
    if opset >= 13:
        return axis if axis is not None else -1, None
    axis = 1 if axis is None else axis  # opset < 13: coerce to 2-D at `axis`
    return -1, (x.shape, math.prod(x.shape[: axis % x.dim()]))


@op("Softmax")
def _softmax_generic(x, *, axis=None, _opset=17, _log=False):
    dim, coerce = _softmax_axis(x, axis, _opset)
    y = x.reshape(coerce[1], -1) if coerce else x
    y = F.log_softmax(y, dim) if _log else F.softmax(y, dim)
    return y.reshape(coerce[0]) if coerce else y


OPS["LogSoftmax"] = lambda x, axis=None, _opset=17: _softmax_generic(x, axis=axis, _opset=_opset, _log=True)


@op("Reshape")
def reshape(x, shape, *, allowzero=0, _opset=17):
    dims = _ints(shape)
    if not allowzero:
        dims = [x.shape[i] if d == 0 else d for i, d in enumerate(dims)]
    return x.reshape(dims)


@op("Flatten")
def flatten(x, *, axis=1, _opset=17):
    axis = axis % x.dim() if x.dim() else 0
    return x.reshape(math.prod(x.shape[:axis]), math.prod(x.shape[axis:]))


@op("Transpose")
def transpose(x, *, perm=None, _opset=17):
    return x.permute(perm if perm is not None else list(reversed(range(x.dim()))))


@op("Concat")
def concat(*xs, axis, _opset=17):
    return torch.cat([t for t in xs if t is not None], dim=axis)


@op("Shape")
def shape(x, *, start=0, end=None, _opset=17):
    return torch.tensor(list(x.shape)[start:end], dtype=torch.int64, device=x.device)


@op("Gather")
def gather(x, idx, *, axis=0, _opset=17):
    idx = torch.where(idx < 0, idx + x.shape[axis], idx)
    return torch.index_select(x, axis, idx.reshape(-1)).reshape(
        list(x.shape[:axis % x.dim()]) + list(idx.shape) + list(x.shape[axis % x.dim() + 1:]))


@op("Unsqueeze")
def unsqueeze(x, axes=None, *, _opset=17):
    axes = _ints(axes)
    rank = x.dim() + len(axes)
    for a in sorted(a % rank for a in axes):
        x = x.unsqueeze(a)
    return x


@op("Squeeze")
def squeeze(x, axes=None, *, _opset=17):
    axes = _ints(axes)
    if axes is None:
        return x.squeeze()
    for a in sorted((a % x.dim() for a in axes), reverse=True):
        x = x.squeeze(a)
    return x


@op("Slice")
def slice_(x, starts, ends, axes=None, steps=None, _opset=17):
    starts, ends = _ints(starts), _ints(ends)
    axes = _ints(axes) or list(range(len(starts)))
    steps = _ints(steps) or [1] * len(starts)
    index = [slice(None)] * x.dim()
    for s, e, a, st in zip(starts, ends, axes, steps):
        if st <= 0:
            _refuse("Slice", f"step {st}")
        index[a % x.dim()] = slice(max(min(s, x.shape[a]), -x.shape[a]), max(min(e, x.shape[a]), -x.shape[a]), st)
    return x[tuple(index)]


_DTYPES = {onnx.TensorProto.FLOAT: torch.float32, onnx.TensorProto.DOUBLE: torch.float64,
           onnx.TensorProto.FLOAT16: torch.float16, onnx.TensorProto.BFLOAT16: torch.bfloat16,
           onnx.TensorProto.INT64: torch.int64, onnx.TensorProto.INT32: torch.int32,
           onnx.TensorProto.INT16: torch.int16, onnx.TensorProto.INT8: torch.int8, onnx.TensorProto.UINT8: torch.uint8,
           onnx.TensorProto.BOOL: torch.bool}


@op("Cast")
def cast(x, *, to, saturate=1, _opset=17):
    if to not in _DTYPES:
        _refuse("Cast", f"to={to}")
    return x.to(_DTYPES[to])


@op("CastLike")
def cast_like(x, like, *, saturate=1, _opset=17):
    return x.to(like.dtype)


def _reduction(fn):
    """An ONNX Reduce* op from `fn(x, dims, keepdim)`; axes come as an input or (older opsets) an attribute."""
    def reduce(x, axes=None, *, keepdims=1, noop_with_empty_axes=0, _opset=17):
        axes = _ints(axes)
        if not axes:
            if noop_with_empty_axes:
                return x
            axes = list(range(x.dim()))
        return fn(x, tuple(axes), bool(keepdims)).to(x.dtype)
    return reduce


for _name, _fn in {"ReduceMean": torch.mean, "ReduceSum": torch.sum, "ReduceMax": torch.amax,
                   "ReduceMin": torch.amin, "ReduceLogSumExp": torch.logsumexp,
                   "ReduceSumSquare": lambda x, d, k: torch.sum(x * x, d, k),
                   "ReduceL1": lambda x, d, k: torch.linalg.vector_norm(x, 1, d, k),
                   "ReduceL2": lambda x, d, k: torch.linalg.vector_norm(x, 2, d, k)}.items():
    OPS[_name] = _reduction(_fn)


def _layer_norm(x, scale, bias, axis, epsilon, stash_type=1):
    """LayerNorm over dims axis..-1, in float32 for half inputs when stash_type=1, then scale and bias."""
    wide = stash_type == 1 and x.dtype in (torch.float16, torch.bfloat16)
    y = F.layer_norm(x.float() if wide else x, x.shape[axis % x.dim():], eps=epsilon).to(x.dtype) * scale
    return y if bias is None else y + bias


@op("LayerNormalization")
def layer_norm(x, scale, bias=None, *, axis=-1, epsilon=1e-5, stash_type=1, _opset=17):
    return _layer_norm(x, scale, bias, axis, epsilon, stash_type)


@op("com.microsoft.SkipLayerNormalization")
def skip_layer_norm(x, skip, gamma, beta=None, bias=None, *, epsilon=1e-12, _opset=17):
    return _layer_norm(x + skip if bias is None else x + skip + bias, gamma, beta, -1, epsilon)


@op("com.microsoft.Gelu", "com.microsoft.BiasGelu")
def bias_gelu(x, bias=None, *, _opset=17):
    return F.gelu(x if bias is None else x + bias)


@op("com.microsoft.FastGelu")
def fast_gelu(x, bias=None, *, _opset=17):
    return F.gelu(x if bias is None else x + bias, approximate="tanh")


@op("com.microsoft.FusedMatMul")
def fused_matmul(a, b, *, alpha=1.0, transA=0, transB=0, transBatchA=0, transBatchB=0, _opset=17):
    if transBatchA or transBatchB:
        _refuse("com.microsoft.FusedMatMul", f"transBatchA={transBatchA}, transBatchB={transBatchB}")
    y = torch.matmul(a.transpose(-1, -2) if transA else a, b.transpose(-1, -2) if transB else b)
    return y if alpha == 1.0 else y * alpha


@op("Split", multi=True)
def split(x, split=None, *, axis=0, num_outputs=None, _opset=17, _outputs=1):
    """Sizes from the `split` input (or attribute before opset 13), else `num_outputs` (or the output count)
    parts of ceil(n / parts), the last one smaller."""
    sizes = _ints(split) or math.ceil(x.shape[axis] / (num_outputs or _outputs))
    return torch.split(x, sizes, dim=axis)


def _reflect(i, n):
    if n < 2:
        _refuse("Pad", "reflect mode on a dimension of size 1")
    i = torch.remainder(i, 2 * n - 2)
    return torch.where(i >= n, 2 * n - 2 - i, i)


_PAD_INDEX = {"edge": lambda i, n: i.clamp(0, n - 1), "reflect": _reflect, "wrap": torch.remainder}


@op("Pad")
def pad(x, pads=None, constant_value=None, axes=None, *, mode="constant", value=0.0, _opset=17):
    """Pads as an input (or attribute before opset 11), optionally on `axes` (opset 18); negative pads crop."""
    axes = [a % x.dim() for a in (_ints(axes) or range(x.dim()))]
    pads = _ints(pads)
    begin, end = [0] * x.dim(), [0] * x.dim()
    for a, b, e in zip(axes, pads, pads[len(axes):]):
        begin[a], end[a] = b, e
    if mode == "constant":
        return F.pad(x, _pad_arg(begin, end), value=value if constant_value is None else constant_value.item())
    if mode not in _PAD_INDEX:
        _refuse("Pad", f"mode={mode}")
    for a, (b, e) in enumerate(zip(begin, end)):
        if b or e:
            n = x.shape[a]
            x = x.index_select(a, _PAD_INDEX[mode](torch.arange(-b, n + e, device=x.device), n))
    return x


@op("Expand")
def expand(x, shape, _opset=17):
    return x.expand(torch.broadcast_shapes(x.shape, tuple(_ints(shape))))


@op("Tile")
def tile(x, repeats, _opset=17):
    return x.repeat(_ints(repeats))


@op("ConstantOfShape")
def constant_of_shape(dims, *, value=None, _opset=17):
    value = torch.zeros(1) if value is None else value
    return torch.full(_ints(dims), value.item(), dtype=value.dtype, device=dims.device)


@op("Range")
def range_(start, limit, delta, _opset=17):
    return torch.arange(start.item(), limit.item(), delta.item(), dtype=start.dtype, device=start.device)


@op("Trilu")
def trilu(x, k=None, *, upper=1, _opset=17):
    k = 0 if k is None else int(k)
    return torch.triu(x, k) if upper else torch.tril(x, k)


@op("Einsum")
def einsum(*xs, equation, _opset=17):
    return torch.einsum(equation, *xs)


@op("CumSum")
def cumsum(x, axis, *, exclusive=0, reverse=0, _opset=17):
    d = int(axis)
    y = x.flip(d) if reverse else x
    y = y.cumsum(d).to(x.dtype) - (y if exclusive else 0)
    return y.flip(d) if reverse else y


@op("GatherND")
def gather_nd(x, idx, *, batch_dims=0, _opset=17):
    """x[idx[..., 0], idx[..., 1], ...] per batch entry, the first `batch_dims` dims of x and idx being batch."""
    m = idx.shape[-1]
    xs = x.reshape(-1, *x.shape[batch_dims:])
    ids = idx.reshape(xs.shape[0], -1, m)
    ids = torch.where(ids < 0, ids + torch.tensor(xs.shape[1:1 + m], device=ids.device), ids)
    rows = torch.arange(xs.shape[0], device=ids.device)[:, None]
    return xs[(rows,) + ids.unbind(-1)].reshape(*idx.shape[:-1], *x.shape[batch_dims + m:])


@op("DequantizeLinear")
def dequantize_linear(x, scale, zero_point=None, *, axis=1, block_size=0, output_dtype=0, _opset=17):
    if block_size or output_dtype:
        _refuse("DequantizeLinear", f"block_size={block_size}, output_dtype={output_dtype}")
    if scale.dim() == 1:  # per axis
        shape = [1] * x.dim()
        shape[axis] = -1
        scale = scale.reshape(shape)
        zero_point = None if zero_point is None else zero_point.reshape(shape)
    x = x.to(torch.int32) if zero_point is None else x.to(torch.int32) - zero_point.to(torch.int32)
    return x.to(scale.dtype) * scale


_COORDS = {"half_pixel": lambda i, s, n_in, n_out: (i + 0.5) / s - 0.5,
           "pytorch_half_pixel": lambda i, s, n_in, n_out: (i + 0.5) / s - 0.5 if n_out > 1 else i * 0,
           "align_corners": lambda i, s, n_in, n_out: i * (n_in - 1) / max(n_out - 1, 1),
           "asymmetric": lambda i, s, n_in, n_out: i / s}
_ROUND = {"round_prefer_floor": lambda c: torch.ceil(c - 0.5), "round_prefer_ceil": lambda c: torch.floor(c + 0.5),
          "floor": torch.floor, "ceil": torch.ceil}
_INTERP = {("linear", 1): "linear", ("linear", 2): "bilinear", ("linear", 3): "trilinear", ("cubic", 2): "bicubic"}


@op("Resize")
def resize(x, roi=None, scales=None, sizes=None, *, mode="nearest", coordinate_transformation_mode="half_pixel",
           cubic_coeff_a=-0.75, exclude_outside=0, extrapolation_value=0.0, nearest_mode="round_prefer_floor",
           antialias=0, axes=None, keep_aspect_ratio_policy="stretch", _opset=17):
    """Nearest on any axes by index; linear and cubic on the spatial dims through F.interpolate."""
    coord = coordinate_transformation_mode
    if coord not in _COORDS or antialias or keep_aspect_ratio_policy != "stretch":
        _refuse("Resize", f"coordinate_transformation_mode={coord}, antialias={antialias}, "
                          f"keep_aspect_ratio_policy={keep_aspect_ratio_policy}")
    axes = [a % x.dim() for a in (axes or range(x.dim()))]
    by_size = sizes is not None and sizes.numel() > 0
    out, scale = list(x.shape), [1.0] * x.dim()
    for a, g in zip(axes, _ints(sizes) if by_size else scales.reshape(-1).tolist()):
        out[a], scale[a] = (g, g / x.shape[a]) if by_size else (math.floor(x.shape[a] * g), g)
    if mode == "nearest":
        if nearest_mode not in _ROUND:
            _refuse("Resize", f"nearest_mode={nearest_mode}")
        for a, (n_in, n_out, s) in enumerate(zip(x.shape, out, scale)):
            if s != 1.0:
                i = torch.arange(n_out, dtype=torch.float32, device=x.device)
                src = _ROUND[nearest_mode](_COORDS[coord](i, s, n_in, n_out)).clamp(0, n_in - 1)
                x = x.index_select(a, src.long())
        return x
    interp = _INTERP.get((mode, x.dim() - 2))
    if (interp is None or out[:2] != list(x.shape[:2]) or coord not in ("half_pixel", "align_corners")
            or mode == "cubic" and (cubic_coeff_a != -0.75 or exclude_outside)):
        _refuse("Resize", f"mode={mode} on {x.dim()}-D input to {out}, coordinate_transformation_mode={coord}, "
                          f"cubic_coeff_a={cubic_coeff_a}, exclude_outside={exclude_outside}")
    size = dict(size=out[2:]) if by_size else dict(scale_factor=scale[2:], recompute_scale_factor=False)
    return F.interpolate(x, mode=interp, align_corners=coord == "align_corners", **size)

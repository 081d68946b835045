"""ONNX -> torch conversion: outputs equal ONNX Runtime's, weights come back exactly, unsupported ops refused."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import corpus

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from evonnx.errors import EvonnxError  # noqa: E402
from evonnx.passes.torchnet.convert import OnnxModule, run_numpy  # noqa: E402

torch.set_num_threads(1)  # tiny graphs: one thread is fastest on a shared machine


def ort_outputs(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def assert_matches_ort(model: onnx.ModelProto, feeds: dict[str, np.ndarray], device: str = "cpu") -> None:
    expected = ort_outputs(model, feeds)
    got = run_numpy(OnnxModule(model).to(device), feeds)
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        assert g.shape == e.shape
        scale = max(1.0, float(np.abs(e).max()))
        tol = 1e-5 if device == "cpu" else 2e-3  # cuDNN convolutions run in TF32 by default
        np.testing.assert_allclose(g, e, rtol=tol, atol=tol * scale)


class SmallLeNet5(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(1, 4, 5), nn.Conv2d(4, 8, 5)
        self.fc1, self.fc2 = nn.Linear(8 * 4 * 4, 32), nn.Linear(32, 10)

    def forward(self, x):
        x = nn.functional.max_pool2d(self.conv1(x), 2)
        x = nn.functional.max_pool2d(self.conv2(x), 2)
        return self.fc2(torch.relu(self.fc1(torch.flatten(x, 1))))


class SmallLeNet300(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(784, 30), nn.Linear(30, 10), nn.Linear(10, 10)

    def forward(self, x):
        return self.fc3(torch.relu(self.fc2(torch.relu(self.fc1(x.view(x.size(0), -1))))))


class Mixed(nn.Module):
    """BatchNorm, padded/strided/grouped convs, ConvTranspose, pools, and the activations we support."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=4)
        self.up = nn.ConvTranspose2d(8, 4, 3, stride=2, padding=1, output_padding=1)
        self.fc = nn.Linear(4 + 8, 5)
        with torch.no_grad():
            self.bn.running_mean.uniform_(-0.5, 0.5)
            self.bn.running_var.uniform_(0.5, 2.0)
            self.bn.weight.uniform_(0.5, 1.5)

    def forward(self, x):
        y = nn.functional.leaky_relu(self.bn(self.conv(x)), 0.1)
        y = torch.sigmoid(self.dw(y)) * torch.tanh(y) - y / 3
        z = nn.functional.gelu(self.up(y))
        z = nn.functional.avg_pool2d(z, 3, stride=2, padding=1, count_include_pad=False)
        pooled = torch.cat([z.mean(dim=(2, 3)), nn.functional.adaptive_avg_pool2d(y, 1).flatten(1)], dim=1)
        return torch.softmax(self.fc(pooled), dim=-1), self.fc(pooled).transpose(0, 1)


def export(module: nn.Module, shape) -> onnx.ModelProto:
    from evonnx.tools.zoo import export_onnx
    torch.manual_seed(0)
    for p in module.parameters():
        nn.init.normal_(p, std=0.3)
    return export_onnx(module, shape)


DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(),
                                                               reason="torch sees no GPU here"))]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("module, shape", [(SmallLeNet5, (1, 28, 28)), (SmallLeNet300, (1, 28, 28)),
                                           (Mixed, (3, 16, 16))])
def test_exported_models_match_onnxruntime(module, shape, device):
    torch.manual_seed(0)
    model = export(module(), shape)
    x = np.random.default_rng(0).standard_normal((16, *shape)).astype(np.float32)
    assert_matches_ort(model, {model.graph.input[0].name: x}, device)


@pytest.mark.parametrize("build, shape", [(corpus.mlp, (5, 8)), (corpus.conv_net, (5, 1, 8, 8)),
                                          (corpus.constant_weights, (5, 8)), (corpus.shared_weight, (5, 8))])
def test_corpus_graphs_match_onnxruntime(build, shape):
    model = build()
    x = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
    assert_matches_ort(model, {"x": x})


def _graph(nodes, inits, in_shape, out_name="y", opset=17):
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(in_shape))],
                              [helper.make_tensor_value_info(out_name, TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)


def test_asymmetric_pads_auto_pad_and_pool_edge_cases_match_onnxruntime():
    rng = np.random.default_rng(2)
    w = numpy_helper.from_array(rng.standard_normal((4, 2, 3, 3)).astype(np.float32), "w")
    wt = numpy_helper.from_array(rng.standard_normal((4, 3, 2, 3)).astype(np.float32), "wt")
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], pads=[0, 1, 2, 1], strides=[2, 1]),
        helper.make_node("BatchNormalization", ["c", "bs", "bb", "bm", "bv"], ["n"], epsilon=1e-3),
        helper.make_node("MaxPool", ["n"], ["m"], kernel_shape=[3, 2], pads=[1, 0, 0, 1], ceil_mode=1),
        helper.make_node("AveragePool", ["m"], ["a"], kernel_shape=[2, 2], pads=[0, 1, 1, 0]),
        helper.make_node("ConvTranspose", ["a", "wt"], ["t"], strides=[2, 3], pads=[1, 0, 0, 2], output_padding=[1, 2]),
        helper.make_node("Conv", ["t", "w2"], ["s"], auto_pad="SAME_UPPER", strides=[2, 2]),
        helper.make_node("Constant", [], ["shape"], value=numpy_helper.from_array(np.array([0, -1], np.int64))),
        helper.make_node("Reshape", ["s", "shape"], ["r"]),
        helper.make_node("Gemm", ["r", "g", "gb"], ["y"], transB=1, alpha=0.5, beta=2.0),
    ]
    bn = [numpy_helper.from_array(rng.uniform(lo, hi, 4).astype(np.float32), name)
          for name, lo, hi in (("bs", 0.5, 1.5), ("bb", -1, 1), ("bm", -1, 1), ("bv", 0.5, 2))]
    x = rng.standard_normal((3, 2, 11, 9)).astype(np.float32)
    probe = _graph(nodes[:6], bn + [w, wt, numpy_helper.from_array(rng.standard_normal((2, 3, 3, 3)).astype(np.float32),
                                                               "w2")], x.shape, "s")
    s_shape = ort_outputs(probe, {"x": x})[0].shape
    k = int(np.prod(s_shape[1:]))
    inits = bn + [w, wt, numpy_helper.from_array(rng.standard_normal((2, 3, 3, 3)).astype(np.float32), "w2"),
             numpy_helper.from_array(rng.standard_normal((6, k)).astype(np.float32), "g"),
             numpy_helper.from_array(rng.standard_normal(6).astype(np.float32), "gb")]
    assert_matches_ort(_graph(nodes, inits, x.shape), {"x": x})


def test_weights_come_back_exactly_and_trainable_are_parameters():
    model = corpus.mlp()
    values = {"w1": np.random.default_rng(3).standard_normal((16, 8)).astype(np.float32)}
    module = OnnxModule(model, trainable=["w1", "w2"], values=values)
    assert sorted(module.weight_names) == ["w1", "w2"]
    assert {n for n, _ in module.named_parameters()} == {"params." + module._keys[n] for n in ("w1", "w2")}
    back = module.weights()
    assert back["w1"].tobytes() == values["w1"].tobytes()
    w2 = numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == "w2"))
    assert back["w2"].tobytes() == w2.tobytes()


def test_fixed_batch_graph_runs_larger_batches_in_chunks():
    """A graph exported at batch 1 bakes the batch into its Reshape targets (as the corpus's sentence encoder
    does): torch runs N samples one chunk at a time, outputs equal to ORT's per sample."""
    rng = np.random.default_rng(4)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"]),
             helper.make_node("Reshape", ["h", "shape"], ["r"]),
             helper.make_node("Softmax", ["r"], ["y"], axis=-1)]
    inits = [numpy_helper.from_array(rng.standard_normal((8, 6)).astype(np.float32), "w"),
             numpy_helper.from_array(np.array([1, 2, 3, 6], np.int64), "shape")]
    graph = helper.make_graph(nodes, "fixed", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 6, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 3, 6])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    x = rng.standard_normal((5, 6, 8)).astype(np.float32)
    expected = np.concatenate([ort_outputs(model, {"x": x[i:i + 1]})[0] for i in range(len(x))])
    for vectorize in (True, False):  # vmap over the chunks, or the loop it falls back to
        module = OnnxModule(model)
        module.vectorize = vectorize
        assert module.batch == 1
        np.testing.assert_allclose(run_numpy(module, {"x": x})[0], expected, rtol=1e-5, atol=1e-6)
        assert module.vectorize == vectorize
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 2
    with pytest.raises(EvonnxError, match="fixes its batch at 2"):
        run_numpy(OnnxModule(model), {"x": x})


def test_unsupported_op_is_refused_naming_it_and_forward_passes_still_work():
    from evonnx.passes.base import PassContext, get_pass
    from evonnx.passes.engine.calib import CalibData
    from evonnx.passes.state import load_state
    model = corpus.if_subgraph()
    with pytest.raises(EvonnxError, match=r"unsupported op\(s\): If"):
        OnnxModule(model)
    state = load_state(model.SerializeToString())
    rng = np.random.default_rng(0)
    calib = CalibData({"x": rng.standard_normal((64, 8)).astype(np.float32), "flag": np.array(True)}, None, "t")
    ctx = PassContext(calib, device="cpu", progress=False)
    pruned = get_pass("magnitude")(sparsity=0.5, refit=False).run(state, ctx)
    assert pruned.global_sparsity() >= 0.5
    with pytest.raises(EvonnxError, match="If"):
        get_pass("distill-finetune")(steps=2).run(pruned, ctx)


def test_passes_import_and_refuse_clearly_without_torch():
    code = r"""
import sys
sys.modules["torch"] = None
from evonnx.errors import EvonnxError
from evonnx.passes.base import available, get_pass
assert "distill-finetune" in available()
try:
    get_pass("distill-finetune")().run(None, None)
except EvonnxError as e:
    print("ok", e)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("ok distill-finetune needs torch")

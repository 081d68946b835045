"""gradient-prune: Taylor / SNIP saliencies reach the target and beat random pruning; saliency is w * grad."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
torch.set_num_threads(1)  # tiny graphs: one thread is fastest on a shared machine

from evonnx.passes.base import PassContext, get_pass  # noqa: E402
from evonnx.passes.engine.calib import CalibData  # noqa: E402
from evonnx.passes.torchnet.convert import OnnxModule  # noqa: E402
from evonnx.passes.torchnet.saliency import saliency  # noqa: E402

from test_distill_finetune import mlp_state  # noqa: E402


@pytest.mark.parametrize("method", ["taylor1", "snip", "taylor2"])
def test_gradient_prune_reaches_target_and_beats_random(method):
    state, calib = mlp_state(3)
    ctx = PassContext(calib, device="cpu", progress=False)
    out = get_pass("gradient-prune")(sparsity=0.6, method=method).run(state, ctx)
    rand = get_pass("random")(sparsity=0.6, refit=False).run(state, ctx)
    assert out.global_sparsity() == pytest.approx(0.6, abs=1e-3)
    for name, mask in out.masks.items():
        assert not np.any(out.current(name)[~mask])
    assert out.history[-1]["fitness"] < rand.history[-1]["fitness"]


def test_taylor1_is_abs_weight_times_label_gradient():
    state, calib = mlp_state(4)
    labels = np.random.default_rng(0).integers(0, 6, calib.num_samples)
    data = CalibData(calib.inputs, labels, "t")
    module = OnnxModule(state.model, ["w1", "w2"], state.held)
    got = saliency(module, data, "taylor1", samples=32, batch=32, seed=0)
    x = torch.from_numpy(calib.inputs["x"][:32])
    loss = torch.nn.functional.cross_entropy(module(x)[0], torch.from_numpy(labels[:32]), reduction="sum")
    g = torch.autograd.grad(loss, [module.parameter("w1")])[0]
    np.testing.assert_allclose(got["w1"], (module.parameter("w1").detach() * g).abs().numpy(), rtol=1e-6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="torch sees no GPU here")
@pytest.mark.parametrize("method", ["taylor1", "snip", "taylor2"])
def test_saliency_on_cuda_equals_cpu(method):
    state, calib = mlp_state(5)
    labels = np.random.default_rng(1).integers(0, 6, calib.num_samples)
    data = CalibData(calib.inputs, labels, "t")
    cpu = saliency(OnnxModule(state.model, ["w1", "w2"], state.held), data, method, samples=64, batch=32, seed=0)
    gpu = saliency(OnnxModule(state.model, ["w1", "w2"], state.held).to("cuda"), data, method, samples=64, batch=32, seed=0)
    for name in cpu:
        np.testing.assert_allclose(gpu[name], cpu[name], rtol=1e-3, atol=1e-6 * float(np.abs(cpu[name]).max()))

"""Classifier outputs that a model's own Softmax already turned into probabilities are compared as
probabilities: softmaxing them again flattens them and hides flipped predictions."""
import numpy as np

from evonnx.passes.engine.metrics import is_probability, kl_divergence
from evonnx.passes.sparsity.suffix import fitness_batch


def softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return (e / e.sum(-1, keepdims=True)).astype(np.float32)


def test_flipped_probabilities_are_far_apart():
    logits = np.random.default_rng(0).standard_normal((64, 2)).astype(np.float32) * 8
    teacher, flipped = softmax(logits), softmax(logits)[:, ::-1]
    assert is_probability(teacher) and not is_probability(logits)
    assert kl_divergence(teacher, flipped) > 2.0  # re-softmaxed probabilities would give < 0.4
    assert kl_divergence(logits, logits[:, ::-1]) > 2.0  # logits as before
    fit = fitness_batch([teacher], [np.stack([teacher, flipped])])
    assert fit[0] < 1e-9 and abs(fit[1] - kl_divergence(teacher, flipped)) < 1e-9


def test_distillation_loss_of_probability_outputs_sees_flipped_predictions():
    torch = __import__("pytest").importorskip("torch")
    from evonnx.passes.torchnet.distill import distill_loss
    logits = np.random.default_rng(1).standard_normal((32, 3)).astype(np.float32) * 6
    teacher = torch.from_numpy(softmax(logits))
    flipped = torch.from_numpy(softmax(logits)[:, ::-1].copy())
    assert distill_loss([flipped], [teacher], 1.0).item() > 2.0  # re-softmaxed probabilities: ~0.2
    assert distill_loss([teacher], [teacher], 1.0).item() < 1e-6

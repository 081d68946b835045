"""SparseGPT's one-shot pruning: exact counts, zeros kept, and less output error than masking alone."""
import numpy as np
import pytest

import corpus
from evonnx.passes.sparsity import sparsegpt
from evonnx.passes.state import load_state


def _layer(seed: int = 0, out: int = 48, k: int = 200, rows: int = 600):
    rng = np.random.default_rng(seed)
    # correlated inputs, as real activations are: a few directions carry most of the energy
    x = rng.standard_normal((rows, 20)) @ rng.standard_normal((20, k)) + 0.3 * rng.standard_normal((rows, k))
    x = x.astype(np.float32)
    w = rng.standard_normal((out, k)).astype(np.float32)
    return x, w


def test_sparsegpt_prunes_exactly_keeps_zeros_and_beats_masking_the_same_count():
    x, w = _layer()
    keep = np.ones(w.shape, bool)
    keep[:, :7] = False  # zeros from an earlier rung stay zero and count
    w = np.where(keep, w, 0).astype(np.float32)
    n_zero = w.size // 2
    pruned, mask = sparsegpt.prune(w, keep, x, n_zero)
    assert pruned.dtype == w.dtype and int((~mask).sum()) == n_zero
    assert not mask[~keep].any() and np.all(pruned[~mask] == 0)
    # masking alone, by the Wanda score (|w| x input norm), to the same count
    score = np.abs(w) * np.linalg.norm(x, axis=0)[None]
    score[~keep] = -np.inf
    masked = np.where(score > np.sort(score.ravel())[n_zero - 1], w, 0)
    def error(v):
        return float(np.linalg.norm(x @ (v - w).T))
    assert error(pruned) < 0.5 * error(masked)


def test_a_quota_below_the_existing_zeros_zeroes_nothing_more():
    x, w = _layer(seed=1, out=8, k=40, rows=100)
    keep = np.random.default_rng(2).random(w.shape) > 0.3
    pruned, mask = sparsegpt.prune(np.where(keep, w, 0).astype(np.float32), keep, x, 3)
    assert np.array_equal(mask, keep)


def test_a_finish_without_re_fits_compensates_each_layers_pruning():
    import corpus
    from evonnx.passes.base import PassContext, get_pass
    from evonnx.passes.engine.calib import CalibData
    from evonnx.passes.state import load_state

    state = load_state(corpus.mlp(seed=4, d_in=24, hidden=48, classes=8).SerializeToString(), label="mlp")
    rng = np.random.default_rng(5)
    x = (rng.standard_normal((160, 4)) @ rng.standard_normal((4, 24)) + 0.1 * rng.standard_normal((160, 24)))
    ctx = PassContext(CalibData({"x": x.astype(np.float32)}, None, "correlated"), device="cpu", progress=False)
    fitness = {}
    for compensate in (False, True):
        out = get_pass("directed-evolution")(sparsity=0.6, allocation="lamp", refit=False, max_evaluations=1,
                                             on_budget="finish", compensate=compensate).run(state, ctx)
        assert out.history[-1]["sparsity"] == pytest.approx(0.6, abs=1e-3)
        fitness[compensate] = out.history[-1]["fitness"]
    assert fitness[True] < 0.5 * fitness[False]


def test_the_finish_is_reckoned_by_its_sweeps_and_inverses_within_the_width_bound():
    from evonnx.passes.sparsity.layers import analyse

    state = load_state(corpus.mlp(d_in=16, hidden=32, classes=6).SerializeToString(), label="mlp")
    layers = analyse(state, state.targets)  # w1: 32 outputs of 16 inputs, w2: 6 of 32
    w1, w2 = 32 * 16 ** 2 + 16 ** 3, 6 * 32 ** 2 + 32 ** 3
    assert sparsegpt.seconds(layers, 32) == pytest.approx(sparsegpt.SECONDS_PER_MAC * (w1 + w2))
    assert sparsegpt.seconds(layers, 16) == pytest.approx(sparsegpt.SECONDS_PER_MAC * w1)

"""Cross-fitted joint measurements: a Gram-fitted rounding measured on the samples it was fitted to looks better
than it is on fresh ones; measured out of fold it does not, and the bit allocation's budget then holds on fresh
samples."""
import numpy as np
import pytest

import corpus
from evonnx.passes.base import PassContext, get_pass
from evonnx.passes.engine.calib import CalibData
from evonnx.passes.engine.fitness import FitnessEngine
from evonnx.passes.quant import apply
from evonnx.passes.quant.apply import Fidelity, Quantizer
from evonnx.passes.quant.crossfit import CrossFit
from evonnx.passes.quant.gptq import inverse_factor
from evonnx.passes.quant.layer import QuantSpec
from evonnx.passes.state import load_state

GPTQ3 = QuantSpec.parse("uniform/channel/rate+gptq", 3)


def inputs(rng, n):
    """Inputs of unequal energy per feature: GPTQ has directions to move error into."""
    return (rng.standard_normal((n, 64)) * np.linspace(0.2, 2, 64)).astype(np.float32)


@pytest.fixture(scope="module")
def setup():
    """A 64-wide MLP with 32 calibration samples (a fold's Gram has rank 16 of 64) and 512 fresh ones."""
    state = load_state(corpus.mlp(seed=3, d_in=64, hidden=64, classes=16).SerializeToString(), label="mlp")
    rng = np.random.default_rng(0)
    ctx = PassContext(calib=CalibData({"x": inputs(rng, 32)}, None, "calib"))
    fresh = FitnessEngine(state.model, CalibData({"x": inputs(rng, 512)}, None, "fresh"), state.table.weights,
                          device="cpu", held=state.held)
    return state, ctx, fresh


def fidelity(state, ctx):
    engine = ctx.engine(state)
    return Fidelity(engine, {n: state.current(n) for n in engine.weight_names})


def fitted(cross, state, spec):
    """Each fold's weights: every target under `spec`, fitted without that fold."""
    fits = {n: cross.fit(n, spec) for n in state.targets}
    return [{n: f[k].weight for n, f in fits.items()} for k in range(len(cross.folds))]


def test_the_whole_samples_grams_are_the_folds_summed(setup):
    state, ctx, _ = setup
    fid = fidelity(state, ctx)
    whole = CrossFit.build(state, ctx, fid, 4, 4096, 0).whole()
    alone = Quantizer(state, fid.engine)
    for q in (whole, alone):
        q.can_refit("w1")
        q._ensure_grams()
    for name in state.targets:
        np.testing.assert_allclose(whole.gram(name), alone.gram(name), rtol=1e-4, atol=1e-3)
        assert whole.rows[name] == alone.rows[name] == 32


def test_each_sample_is_measured_with_the_weights_fitted_on_the_other_fold(setup):
    state, ctx, _ = setup
    fid = fidelity(state, ctx)
    cross = CrossFit.build(state, ctx, fid, 4, 4096, 0)
    assert sorted(np.concatenate(cross.index).tolist()) == list(range(32)) and [len(i) for i in cross.index] == [8] * 4
    folds = fitted(cross, state, GPTQ3)
    assert not np.array_equal(folds[0]["w1"], folds[1]["w1"])  # each fit's Grams move the rounding their own way
    joined = cross.outputs(folds)[0]
    for k in range(4):
        alone = fid.engine.outputs(folds[k])[0]  # fold k's samples under the fits that left it out
        np.testing.assert_allclose(joined[cross.index[k]], alone[cross.index[k]], rtol=1e-5, atol=1e-6)


def test_out_of_fold_losses_are_what_fresh_samples_see_and_in_sample_ones_are_not(setup):
    state, ctx, fresh = setup
    fid = fidelity(state, ctx)
    cross = CrossFit.build(state, ctx, fid, 4, 4096, 0)
    weights = {n: cross.whole().quantize(n, GPTQ3).weight for n in state.targets}
    in_sample = fid.evaluate([weights])[0].metrics.fitness
    out_of_fold = cross.measure(fitted(cross, state, GPTQ3))
    on_fresh = fresh.evaluate([weights])[0].fitness
    assert in_sample < 0.7 * on_fresh  # the rounding fitted the calibration samples' activations
    assert abs(out_of_fold.metrics.fitness - on_fresh) < 0.25 * on_fresh


def test_the_budget_holds_on_fresh_samples_when_measured_out_of_fold(setup):
    state, ctx, fresh = setup
    budget, losses = 0.005, {}
    for cross_fit in (4, 0):
        out = get_pass("bit-allocation")(schemes=["uniform/channel/rate+gptq"], metric="kl", max_kl=budget,
                                         cross_fit=cross_fit, nontarget="exact", tighter=[]).run(state, ctx)
        assert out.history[-1]["cross_folds"] == cross_fit and out.history[-1]["joint_loss"] <= budget
        losses[cross_fit] = fresh.evaluate([{n: out.current(n) for n in state.table.weights}])[0].fitness
    assert losses[4] <= 1.2 * budget < 1.5 * budget < losses[0]


def test_too_few_samples_for_two_folds_measure_in_sample():
    state = load_state(corpus.mlp(seed=3, d_in=8, hidden=8, classes=4).SerializeToString(), label="mlp")
    ctx = PassContext(calib=CalibData({"x": inputs(np.random.default_rng(1), 15)[:, :8]}, None, "calib"))
    assert CrossFit.build(state, ctx, fidelity(state, ctx), 4, 4096, 0) is None
    out = get_pass("bit-allocation")(schemes=["uniform/channel/rate+gptq"], metric="kl").run(state, ctx)
    assert out.history[-1]["cross_folds"] == 0


def test_the_grams_without_each_fold_are_factored_once_for_every_option(setup, monkeypatch):
    state, ctx, _ = setup
    cross = CrossFit.build(state, ctx, fidelity(state, ctx), 4, 4096, 0)
    gptq4 = QuantSpec.parse("uniform/channel/rate+gptq", 4)
    made = []
    monkeypatch.setattr(apply, "inverse_factor", lambda *a: made.append(a[0].shape) or inverse_factor(*a))
    first, second = cross.fit("w1", GPTQ3), cross.fit("w1", gptq4)
    assert len(made) == 4  # one factor a fold, for both options
    for spec, fits in ((GPTQ3, first), (gptq4, second)):
        for k, fit in enumerate(fits):  # as a fit from scratch on the other folds' Grams
            fresh = Quantizer.pooled(cross.parts[:k] + cross.parts[k + 1:]).quantize("w1", spec)
            np.testing.assert_array_equal(fit.weight, fresh.weight)

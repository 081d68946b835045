"""Sparsity building blocks and the one-shot baselines: exact targets, allocation, re-fitting, cheap evaluation."""
import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

import corpus
from evonnx.passes.base import PassContext, get_pass
from evonnx.passes.engine.calib import synthetic
from evonnx.passes.engine.fitness import FitnessEngine
from evonnx.passes.sparsity import refit as rf
from evonnx.passes.sparsity import targets as tg
from evonnx.passes.sparsity.layers import Layer, analyse
from evonnx.passes.sparsity.suffix import Evaluator
from evonnx.passes.state import load_state


def odd_conv(seed=0) -> onnx.ModelProto:
    """Conv with stride, asymmetric pads and dilation, then Gemm with transB=0, alpha and beta."""
    rng = np.random.default_rng(seed)
    nodes = [helper.make_node("Conv", ["x", "k", "kb"], ["c"], strides=[2, 1], pads=[1, 0, 2, 1], dilations=[1, 2]),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("Flatten", ["r"], ["f"]),
             helper.make_node("Gemm", ["f", "w", "b"], ["y"], alpha=0.5, beta=2.0)]
    inits = [numpy_helper.from_array(rng.standard_normal((6, 2, 3, 3)).astype(np.float32) * 0.3, "k"),
             numpy_helper.from_array(rng.standard_normal(6).astype(np.float32) * 0.1, "kb"),
             numpy_helper.from_array(rng.standard_normal((6 * 5 * 7, 5)).astype(np.float32) * 0.1, "w"),
             numpy_helper.from_array(rng.standard_normal(5).astype(np.float32) * 0.1, "b")]
    return corpus._model(nodes, [corpus.fin("x", "N", 2, 9, 10)], [corpus.fin("y", "N", 5)], inits)


def _setup(model, n=160):
    state = load_state(model.SerializeToString())
    return state, synthetic(state.model, n, seed=3)


@pytest.mark.parametrize("kernel,strides,pads,dilations,shape", [
    ([3, 3], [1, 1], [1, 1, 1, 1], [1, 1], (2, 5, 9, 7)),
    ([3, 3], [2, 1], [0, 1, 2, 1], [2, 1], (3, 4, 11, 8)),
    ([5], [2], [2, 2], [1], (2, 3, 17)),
])
def test_a_convolutions_input_columns_are_its_patch_rows_transposed(kernel, strides, pads, dilations, shape):
    """`x_cols` ([K, rows] in one copy, what the evaluator caches) is `x_mat`'s im2col transposed, and
    `col_norms` (made without the patches) its columns' norms, for strided, dilated, unevenly padded and 1-D
    convolutions."""
    conv = {"kernel": kernel, "strides": strides, "pads": pads, "dilations": dilations, "auto_pad": "NOTSET"}
    layer = Layer("w", (6, shape[1], *kernel), kind="conv", conv=conv)
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    cols = layer.x_cols(x)
    assert cols.flags.c_contiguous and np.array_equal(cols, layer.x_mat(x).T)
    np.testing.assert_allclose(layer.col_norms(x), np.linalg.norm(cols.astype(np.float64), axis=1), rtol=1e-12)


def test_keep_mask_zeroes_exactly_n_lowest():
    scores = np.array([[3.0, 1.0, 1.0], [0.5, 2.0, 1.0]])
    keep = tg.keep_mask(scores, 3)
    assert (~keep).sum() == 3
    assert not keep[1, 0] and not keep[0, 1] and not keep[0, 2]  # ties broken by index
    assert tg.zero_count(1000, 0.9) == 900 and tg.zero_count(7, 0.5) == 4


def test_allocate_reaches_exact_total_and_favours_insensitive_layers():
    sizes = {"a": 1000, "b": 3000, "c": 500}
    levels = np.array([0.0, 0.5, 0.8, 0.9, 0.95, 0.98])
    curves = {"a": levels ** 2 * 10, "b": levels ** 4 * 0.1, "c": levels * 1.0}
    out = tg.allocate(levels, curves, sizes, 0.8)
    zeros = sum(tg.zero_count(sizes[n], s) for n, s in out.items())
    assert zeros == tg.zero_count(4500, 0.8)
    assert out["b"] > out["a"]


@pytest.mark.parametrize("with_bias", [True, False])
def test_refit_never_increases_reconstruction_error(with_bias):
    rng = np.random.default_rng(1)
    x = np.maximum(rng.standard_normal((400, 40)), 0).astype(np.float32)
    x[:, 3] = 0  # a dead input
    w = rng.standard_normal((12, 40)).astype(np.float32)
    b = rng.standard_normal(12).astype(np.float32)
    t = x @ w.T + b + 0.3 * rng.standard_normal((400, 12)).astype(np.float32)
    for sparsity in (0.3, 0.7, 0.95):
        mask = tg.keep_mask(np.abs(w), tg.zero_count(w.size, sparsity))
        new_w, new_b, stats = rf.refit(w, mask, x, t, b if with_bias else None)
        bias_old, bias_new = (b, new_b) if with_bias else (0, 0)
        before = np.sum((x @ np.where(mask, w, 0).T + bias_old - t) ** 2, axis=0)
        after = np.sum((x @ new_w.T + bias_new - t) ** 2, axis=0)
        assert np.all(after <= before * (1 + 1e-5) + 1e-3)
        assert after.sum() < before.sum()
        assert np.array_equal(new_w != 0, mask)  # exactly the mask's sparsity


@pytest.mark.parametrize("with_bias", [True, False])
def test_relu_aware_refit_lowers_the_post_relu_error_below_plain_least_squares(with_bias):
    rng = np.random.default_rng(3)
    x = np.maximum(rng.standard_normal((600, 40)), 0).astype(np.float32)
    w = rng.standard_normal((16, 40)).astype(np.float32)
    b = rng.standard_normal(16).astype(np.float32) - 1.0
    t = x @ w.T + b
    relu_err = lambda nw, nb: np.sum((np.maximum(x @ nw.T + nb, 0) - np.maximum(t, 0)) ** 2, axis=0)  # noqa: E731
    floor = np.zeros(16, np.float32)
    for sparsity in (0.5, 0.9):
        mask = tg.keep_mask(np.abs(w), tg.zero_count(w.size, sparsity))
        bias = b if with_bias else None
        plain_w, plain_b, _ = rf.refit(w, mask, x, t - (0 if with_bias else b), bias)
        relu_w, relu_b, stats = rf.refit(w, mask, x, t - (0 if with_bias else b), bias,
                                         relu_floor=floor if with_bias else -b)
        pb, rb = (plain_b, relu_b) if with_bias else (b, b)
        hinge = lambda nw, nb: rf.hinge_errors(x @ nw.T + nb, t, 0.0, t > 0)  # noqa: E731 - what it minimises
        before, after = hinge(np.where(mask, w, 0), b), hinge(relu_w, rb)
        assert np.all(after <= before * (1 + 1e-5) + 1e-3)  # never worse per output than the pruned layer
        assert relu_err(relu_w, rb).sum() < relu_err(plain_w, pb).sum()  # the error that matters after the Relu
        assert stats["error_after"] <= stats["error_before"]
        assert np.array_equal(relu_w != 0, mask)


def test_refit_matches_least_squares_for_one_row():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((300, 20)).astype(np.float32)
    w = rng.standard_normal((4, 20)).astype(np.float32)
    t = x @ w.T + rng.standard_normal((300, 4)).astype(np.float32)
    mask = tg.keep_mask(np.abs(w), 40)
    new_w, _, _ = rf.refit(w, mask, x, t, None, ridge=0.0)
    keep = np.flatnonzero(mask[1])
    ref, *_ = np.linalg.lstsq(x[:, keep].astype(np.float64), t[:, 1].astype(np.float64), rcond=None)
    np.testing.assert_allclose(new_w[1, keep], ref, rtol=1e-3, atol=1e-4)


def test_sample_axes_are_measured_on_groups_sized_by_bytes(monkeypatch):
    """The evaluator measures its probe outputs' sample axes two forward passes a group: MEASURE_GROUP outputs at
    first, then as many as MEASURE_BYTES hold (8 at a time took 52 s of a 60 s limit on a 1024 x 1024 U-Net),
    with the same axes as one output at a time."""
    from evonnx.passes.sparsity import suffix
    state, calib = _setup(corpus.cnn())
    layers = analyse(state, state.targets)
    groups, measuring = [], []
    run, measure = suffix.Runner.run, Evaluator._measure
    monkeypatch.setattr(suffix.Runner, "run", lambda self, feeds, outputs=None: (
        measuring and groups.append(outputs)) or run(self, feeds, outputs))
    monkeypatch.setattr(Evaluator, "_measure", lambda self, *a: (
        measuring.append(1), measure(self, *a), measuring.clear()))
    monkeypatch.setattr(suffix, "MEASURE_GROUP", 2)

    def evaluator():
        groups.clear()
        return Evaluator(state, layers, calib, ["CPUExecutionProvider"], fitness_samples=16, refit_samples=16)

    by_bytes = evaluator()
    assert [len(g) for g in groups] == [2, 2, len(by_bytes.probe.output_names) - 2, len(groups[2])]  # one then two
    monkeypatch.setattr(suffix, "MEASURE_BYTES", 1)
    one_by_one = evaluator()
    assert len(groups) == 2 * len(one_by_one.probe.output_names) - 2
    assert one_by_one.axes == by_bytes.axes and one_by_one.per == by_bytes.per


@pytest.mark.parametrize("make", [corpus.mlp, corpus.conv_net, odd_conv])
def test_cheap_evaluation_matches_the_engine(make):
    state, calib = _setup(make())
    layers = analyse(state, state.targets)
    assert all(layer.fast for layer in layers)
    ev = Evaluator(state, layers, calib, ["CPUExecutionProvider"], fitness_samples=100, refit_samples=160)
    engine = FitnessEngine(state.model, calib.subset(100), state.targets, device="cpu", held=state.held)
    rng = np.random.default_rng(0)
    for layer in layers:
        view = ev.visit(layer, state)
        pool = rng.choice(layer.size, layer.size // 2, replace=False)
        members = rng.random((4, len(pool))) < 0.5
        view.use_pool(pool)
        got = np.concatenate([view.evaluate_members(members), view.evaluate([pool[members[0]]])])
        want = []
        for row in [*members, members[0]]:
            w = layer.to_mat(state.original(layer.weight)).copy()
            w.ravel()[pool[row]] = 0
            want.append(engine.fitness([{layer.weight: layer.from_mat(w)}])[0])
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-7)


def _run(name, model, seed=0, **config):
    state, calib = _setup(model)
    ctx = PassContext(calib, device="cpu", seed=seed, progress=False)
    return get_pass(name)(**config).run(state, ctx)


@pytest.mark.parametrize("name", ["magnitude", "random"])
def test_baselines_reach_exact_per_layer_targets(name):
    out = _run(name, corpus.conv_net(), layer_sparsity={"k": 0.5, "w": 0.9}, refit=True, fitness_samples=64,
               refit_samples=160)
    assert np.count_nonzero(out.current("k") == 0) == tg.zero_count(36, 0.5)
    assert np.count_nonzero(out.current("w") == 0) == tg.zero_count(768, 0.9)
    for n in ("k", "w"):
        assert np.array_equal(out.masks[n], out.current(n) != 0)
    rec = out.history[-1]
    assert rec["pass"] == name and rec["stop_reason"] == "done" and rec["fitness"] > 0


def test_global_magnitude_is_exact_over_all_layers_and_refit_helps():
    plain = _run("magnitude", corpus.mlp(d_in=16, hidden=32, classes=6), sparsity=0.7, refit=False)
    refit = _run("magnitude", corpus.mlp(d_in=16, hidden=32, classes=6), sparsity=0.7, refit=True)
    total = 16 * 32 + 32 * 6
    for out in (plain, refit):
        assert sum(np.count_nonzero(out.current(n) == 0) for n in ("w1", "w2")) == tg.zero_count(total, 0.7)
    assert np.array_equal(plain.masks["w1"], refit.masks["w1"])
    assert refit.history[-1]["fitness"] < plain.history[-1]["fitness"]


def test_the_lowest_entries_are_a_stable_argsorts_first_in_linear_time():
    from evonnx.passes.sparsity.targets import lamp, lowest
    rng = np.random.default_rng(0)
    for trial in range(200):
        n = int(rng.integers(1, 120))
        values = rng.integers(0, 5, n).astype(float) if trial % 2 else rng.standard_normal(n)
        values[rng.random(n) < 0.2 * (trial % 3 == 0)] = np.inf  # entries that may not be zeroed
        k = int(rng.integers(0, n + 2))
        assert np.flatnonzero(lowest(values, k)).tolist() == sorted(np.argsort(values, kind="stable")[:k])
    assert lamp({}, 0.5) == {}  # no prunable layer (every float weight kept exact)


def test_the_refit_solves_its_rows_a_block_at_a_time_as_all_at_once(monkeypatch):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((300, 40)).astype(np.float32)
    w = rng.standard_normal((13, 40)).astype(np.float32)
    b = rng.standard_normal(13).astype(np.float32)
    t = x @ w.T + b + 0.3 * rng.standard_normal((300, 13)).astype(np.float32)
    mask = tg.keep_mask(np.abs(w), tg.zero_count(w.size, 0.6))
    whole = rf.refit(w, mask, x, t, b)
    monkeypatch.setattr(rf, "SOLVE_ENTRIES", 41 * 3)  # three rows (and the bias column) a block, one left over
    blocks = rf.refit(w, mask, x, t, b)
    np.testing.assert_allclose(blocks[0], whole[0], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(blocks[1], whole[1], rtol=1e-6, atol=1e-7)


def test_layers_whose_refit_costs_too_much_keep_their_survivors_unfitted(monkeypatch):
    """A re-fit costs out x K^2 an iteration: past MAX_REFIT_WORK the survivors stay as they are."""
    from evonnx.passes.sparsity import common

    plain = _run("magnitude", corpus.mlp(d_in=16, hidden=32, classes=6), sparsity=0.7, refit=False)
    monkeypatch.setattr(common, "MAX_REFIT_WORK", 7000)  # w1: 32 outputs x 16^2 = 8192; w2: 6 x 32^2 = 6144
    refit = _run("magnitude", corpus.mlp(d_in=16, hidden=32, classes=6), sparsity=0.7, refit=True)
    np.testing.assert_array_equal(refit.current("w1"), plain.current("w1"))
    assert not np.array_equal(refit.current("w2"), plain.current("w2"))
    np.testing.assert_array_equal(refit.masks["w2"], plain.masks["w2"])

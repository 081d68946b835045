"""Weight Evolution: selection (global threshold, per-layer rule, starvation), matching, crossover, masks,
determinism, and its plumbing in distill-finetune (off: no change; on: masks hold, resume bit-identical)."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
torch.set_num_threads(1)

import corpus  # noqa: E402
from evonnx.passes.base import PassContext, get_pass  # noqa: E402
from evonnx.passes.distill_finetune import evolution_axes  # noqa: E402
from evonnx.passes.engine.calib import CalibData  # noqa: E402
from evonnx.passes.state import load_state  # noqa: E402
from evonnx.passes.torchnet import weight_evolution  # noqa: E402
from evonnx.passes.torchnet.weight_evolution import evolve, select  # noqa: E402
from test_distill_finetune import crash_and_resume  # noqa: E402


def pairs(sel):
    return {n: list(zip(s.tolist(), w.tolist())) for n, (s, w) in sel.items()}


def t(*v):
    return torch.tensor(v, dtype=torch.float32)


# -- selection and matching ---------------------------------------------------------------------------
def test_global_threshold_then_per_layer_rule():
    # pooled ascending: .05 .08 .2 .25 .3 .4 .5 1 -> index int(8 x .25) = 2 -> th = .2 (strictly under)
    sel = select({"a": t(1.0, 0.05, 0.5, 0.08), "b": t(0.3, 0.2, 0.25, 0.4)}, fraction=0.25)
    # a: two under th, both <= .1 x 1.0; k-th strongest matched with the k-th strongest inferior
    assert pairs(sel) == {"a": [(0, 3), (2, 1)], "b": []}


def test_per_layer_rule_caps_the_global_one():
    # th = .9: filters 1 and 2 are under it, but only filter 1 is <= .1 x the layer's largest
    assert pairs(select({"a": t(1.0, 0.05, 0.15, 0.9)}, fraction=0.5)) == {"a": [(0, 1)]}
    # relative 0.2 admits both: still capped by the global count (2)
    assert pairs(select({"a": t(1.0, 0.05, 0.15, 0.9)}, fraction=0.5, relative=0.2)) == {"a": [(0, 2), (3, 1)]}


def test_starving_layers_get_one_filter_every_patience_layers():
    weak = t(1.0, 0.5)  # under th = 1.0 but above .1 x 1.0: no candidate by the per-layer rule
    sel = select({"l1": weak, "l2": weak, "l3": weak, "l4": weak}, fraction=0.5)  # patience = 4 / 2
    assert pairs(sel) == {"l1": [], "l2": [(0, 1)], "l3": [], "l4": [(0, 1)]}
    # a layer with candidates restarts the counter
    sel = select({"l1": weak, "l2": t(1.0, 0.01), "l3": weak, "l4": weak}, fraction=0.5)
    assert pairs(sel) == {"l1": [], "l2": [(0, 1)], "l3": [], "l4": [(0, 1)]}
    assert pairs(select({"l1": weak, "l2": weak}, fraction=0.5, patience=5)) == {"l1": [], "l2": []}


def test_more_candidates_than_important_filters_and_ineligible_ones():
    # three inferior, one important: only the strongest inferior is matched (zip of the two sorted lists)
    assert pairs(select({"a": t(1.0, 0.01, 0.02, 0.03)}, fraction=0.75)) == {"a": [(0, 3)]}
    # NaN (no allowed entry) neither ranks nor evolves; zero fraction: nothing
    assert pairs(select({"a": t(1.0, float("nan"), 0.05, 0.9)}, fraction=0.34)) == {"a": [(0, 2)]}
    assert pairs(select({"a": t(1.0, 0.01)}, fraction=0.0)) == {"a": []}


# -- crossover ----------------------------------------------------------------------------------------
def conv_pair():
    w = torch.zeros(2, 2, 1, 3)  # filter 0 important, filter 1 inferior; 2 input channels x 3 taps
    w[0, 0, 0], w[0, 1, 0] = t(1.0, -4.0, 2.0), t(0.5, 0.5, -3.0)
    w[1, 0, 0], w[1, 1, 0] = t(0.2, -0.1, 0.3), t(0.05, 0.2, 0.05)
    return w


def harmonic(s, large):
    return np.sign(s) * 2 * large * abs(s) / (large + abs(s))


def test_spatial_crossover_replaces_each_slices_smallest_element():
    w = conv_pair()
    before = w.clone()
    assert evolve({"k": w}, {"k": None}, {"k": 0}, fraction=0.5) == {"k": 1}
    expect = before.clone()
    expect[1, 0, 0, 1] = harmonic(-0.1, 4.0)  # -0.1 with the important slice's largest |w| (-4)
    expect[1, 1, 0, [0, 2]] = harmonic(0.05, 3.0)  # a tie: every element equal to the smallest
    assert torch.allclose(w, expect, atol=1e-7, rtol=0) and torch.equal(w[0], before[0])
    # same signs: the paper code's signed blend a = s / (s + l), a x l + (1 - a) x s, gives the same
    s, large = 0.05, 0.5
    a = s / (s + large)
    assert harmonic(s, large) == pytest.approx(a * large + (1 - a) * s)


def test_spatial_crossover_respects_the_mask():
    w = conv_pair()
    mask = np.ones(w.shape, bool)
    mask[1, 0, 0, 1] = False  # the smallest element of slice 0 is pruned
    w[~torch.from_numpy(mask)] = 0
    before = w.clone()
    evolve({"k": w}, {"k": mask}, {"k": 0}, fraction=0.5)
    assert w[1, 0, 0, 1] == 0
    assert w[1, 0, 0, 0] == pytest.approx(harmonic(0.2, 4.0))  # smallest among the allowed ones
    assert w[1, 0, 0, 2] == before[1, 0, 0, 2]


def test_whole_filter_blend_for_matrices_on_the_last_axis():
    w = torch.stack([t(1.0, -2.0, 3.0), t(0.1, 0.05, -0.15), t(2.0, 2.0, 2.0)], dim=1)  # MatMul [in, out]
    before = w.clone()
    # norms 2, .1, 2: the tie between filters 0 and 2 keeps index order, so filter 0 is matched with 1
    assert evolve({"m": w}, {"m": None}, {"m": 1}, fraction=0.34) == {"m": 1}
    a = 0.3 / (0.3 + 6.0)
    assert torch.allclose(w[:, 1], a * before[:, 1] + (1 - a) * before[:, 0])
    assert torch.equal(w[:, [0, 2]], before[:, [0, 2]])

    w = torch.stack([t(0.0, -2.0, 3.0), t(0.1, 0.0, -0.15), t(1.0, 1.0, 1.0)], dim=1)
    mask = (w != 0).numpy()  # filter 0 is pruned at entry 0, filter 1 at entry 1
    evolve({"m": w}, {"m": mask}, {"m": 1}, fraction=0.34)
    a = 0.25 / (0.25 + 5.0)  # filter 1 (norm .083) is matched with filter 0 (norm 1.67)
    assert w[0, 1] == pytest.approx(0.1)  # the important filter is pruned there: the survivor stays
    assert w[1, 1] == 0  # pruned stays pruned
    assert w[2, 1] == pytest.approx(a * -0.15 + (1 - a) * 3.0)


def test_repeated_evolution_never_zeroes_a_survivor():
    (w, masks, axes) = random_layers(1)
    for n in w:  # important filters pruned where inferior ones survive: the case that shrank them to 0
        masks[n] = masks[n] & (np.arange(masks[n].size).reshape(masks[n].shape) % 2 == 0)
        w[n] = w[n] * torch.from_numpy(masks[n])
        w[n][torch.from_numpy(masks[n]) & (w[n] == 0)] = 1e-3
    for _ in range(200):
        evolve(w, masks, axes, fraction=0.5, relative=1.0)
    for n, m in masks.items():
        assert torch.all(w[n][torch.from_numpy(m)] != 0), n


def random_layers(seed):
    g = torch.Generator().manual_seed(seed)
    shapes = {"c": ((8, 3, 3, 3), 0), "p": ((16, 8, 1, 1), 0), "d": ((8, 1, 3, 3), 0), "m": ((16, 12), 1)}
    weights, masks = {}, {}
    for n, (shape, _) in shapes.items():
        w = torch.randn(shape, generator=g) * torch.rand(shape[0] if n != "m" else shape[1], generator=g).pow(4) \
            .reshape((-1,) + (1,) * (len(shape) - 1) if n != "m" else (1, -1))
        m = (torch.rand(shape, generator=g) > 0.6).numpy()
        weights[n], masks[n] = w * torch.from_numpy(m), m
    return weights, masks, {n: a for n, (_, a) in shapes.items()}


def test_masks_hold_and_evolve_is_deterministic():
    (w1, masks, axes), (w2, _, _) = random_layers(0), random_layers(0)
    before = {n: w.clone() for n, w in w1.items()}
    total = 0
    for _ in range(5):
        s1 = evolve(w1, masks, axes, fraction=0.3, relative=0.5)
        assert s1 == evolve(w2, masks, axes, fraction=0.3, relative=0.5)
        total += sum(s1.values())
    assert total > 0
    for n, m in masks.items():
        assert torch.equal(w1[n], w2[n]), n
        assert not torch.any(w1[n][torch.from_numpy(~m)]), f"{n}: a pruned entry came back"
    assert any(not torch.equal(w1[n], before[n]) for n in w1)


# -- distill-finetune ---------------------------------------------------------------------------------
def cnn_state():
    rng = np.random.default_rng(0)
    state = load_state(corpus.cnn().SerializeToString())
    calib = CalibData({"x": rng.standard_normal((64, 3, 12, 12)).astype(np.float32)}, None, "test")
    ctx = PassContext(calib, device="cpu", progress=False)
    return get_pass("magnitude")(sparsity=0.6, refit=False).run(state, ctx), calib


def ctx_for(calib, workdir=None):
    return PassContext(calib, device="cpu", progress=False, workdir=workdir)


FAST = dict(steps=24, batch_size=16, lr=3e-3, eval_every=8, checkpoint_every=8)
WE = dict(weight_evolution=True, we_every=5, we_relative=1.0, we_decay=False)


def test_evolvable_weights_are_convs_and_never_heads():
    state, _ = cnn_state()
    assert evolution_axes(state, state.targets, {}, "conv") == {"c1": 0, "dw": 0, "c2": 0}
    assert evolution_axes(state, state.targets, {}, "all") == {"c1": 0, "dw": 0, "c2": 0}  # fc: the head
    mlp = load_state(corpus.mlp().SerializeToString())
    assert evolution_axes(mlp, mlp.targets, {}, "conv") == {}
    assert evolution_axes(mlp, mlp.targets, {}, "all") == {"w1": 0}


def test_off_leaves_training_unchanged(monkeypatch):
    pruned, calib = cnn_state()
    plain = get_pass("distill-finetune")(**FAST).run(pruned, ctx_for(calib))

    def boom(*a, **k):
        raise AssertionError("evolve called with weight_evolution off")

    monkeypatch.setattr(weight_evolution, "evolve", boom)
    off = get_pass("distill-finetune")(**FAST, we_every=1, we_fraction=0.9).run(pruned, ctx_for(calib))
    for n in plain.history[-1]["trained"]:
        assert off.weights[n].tobytes() == plain.weights[n].tobytes(), n
    assert "evolved_filters" not in off.history[-1]
    monkeypatch.undo()
    on = get_pass("distill-finetune")(**FAST, **WE, keep_best=False).run(pruned, ctx_for(calib))
    rec = on.history[-1]
    assert rec["evolvable"] == ["c1", "c2", "dw"] and sum(rec["evolved_filters"].values()) > 0
    assert any(on.weights[n].tobytes() != plain.weights[n].tobytes() for n in rec["evolvable"])
    for name, mask in pruned.masks.items():
        assert on.masks[name].tobytes() == mask.tobytes()
        assert not np.any(on.current(name)[~mask]), f"{name}: a pruned entry came back"


def test_resume_with_evolution_is_bit_identical(tmp_path):
    pruned, calib = cnn_state()
    straight, resumed = crash_and_resume(dict(FAST, **WE), pruned, calib, tmp_path, crash_at=13)
    assert resumed.history[-1]["evolved_filters"] == straight.history[-1]["evolved_filters"]

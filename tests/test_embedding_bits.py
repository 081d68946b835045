"""Embedding tables at few bits: entropy-sized grids, the clipping search on many small rows, the pad-aware
cosine, and a bit allocation whose layers alone are measured on a share of the calibration samples."""
import numpy as np
import pytest

import corpus
from evonnx.formats.tensor import dequantize
from evonnx.passes.base import PassContext, get_pass
from evonnx.passes.bit_allocation import BitAllocation
from evonnx.passes.compress.default import default_pipeline
from evonnx.passes.compress.timing import (FIXED_BITS_SECONDS_PER_PARAM, GPTQ_SECONDS_PER_PARAM, RATE_SECONDS_PER_PARAM,
                                           BitCosts, Budget, fallback_seconds)
from evonnx.passes.engine.calib import CalibData
from evonnx.errors import EvonnxError
from evonnx.passes.engine.tasks import Cosine, pick, real_tokens
from evonnx.passes.quant import uniform
from evonnx.passes.quant.layer import QuantSpec, quantize_weight, survivors
from evonnx.passes.quant.sizing import coded_bytes
from evonnx.passes.state import load_state


def table(rows=3000, dim=384, seed=0):
    """A heavy-tailed table whose rows differ in scale by 10x, one row with an outlier, like a word embedding."""
    rng = np.random.default_rng(seed)
    w = rng.standard_t(5, (rows, dim)) * np.exp(rng.uniform(np.log(0.01), np.log(0.1), (rows, 1)))
    w[7, 3] = 40 * np.abs(w[7]).max()
    return w.astype(np.float32)


def row_errors(w, spec):
    q = quantize_weight("emb", w, survivors(w, None), QuantSpec.parse(spec), 0)
    err = np.linalg.norm(q.weight.astype(np.float64) - w, axis=1) / np.linalg.norm(w, axis=1)
    return err, coded_bytes(q.tensor)["total"] * 8 / w.size, q


def test_a_table_at_4_coded_bits_per_row_keeps_every_rows_error_small_and_never_clips():
    """rate@4: a step of about 0.26 RMS a row, so each row's error is about 0.26 / sqrt(12) of its RMS whatever
    its scale; no row is clipped (the outlier row gets a wider step), no survivor decodes to zero."""
    w = table()
    err, bits, q = row_errors(w, "uniform/channel/rate@4")
    assert bits < 4.2  # codes about 4 bits (heavy tails: fewer) plus about a byte of coded scale a row
    normal = np.delete(err, 7)
    assert normal.max() < 0.09 and normal.max() < 1.3 * np.median(normal)
    assert np.abs(q.weight[7, 3] - w[7, 3]) <= 0.5 * q.tensor.scale[7] * (1 + 1e-6)  # the outlier is on the grid
    assert not np.any(q.weight == 0) and q.bumped == 0 and q.tensor.bits == uniform.RATE_BITS
    assert np.array_equal(dequantize(q.tensor), q.weight)


def test_in_fewer_coded_bits_the_entropy_sized_grid_beats_the_clipped_one_most_in_the_worst_row():
    w = table(seed=1)
    clipped, clipped_bits, _ = row_errors(w, "uniform/channel/sym@4")
    sized, sized_bits, _ = row_errors(w, "uniform/channel/rate@3")
    assert sized_bits < clipped_bits
    assert np.sqrt(np.mean(sized ** 2)) < 0.95 * np.sqrt(np.mean(clipped ** 2))
    assert np.delete(sized, 7).max() < 0.5 * np.delete(clipped, 7).max()


def test_the_clipping_search_on_many_short_rows_measures_a_third_and_finds_the_same_grids():
    """8000 rows of 384 (a word embedding's shape): the search measures PER_GROUP values a row (its TAIL
    outermost all), and its grids are within 1 % of the full search's squared error."""
    rng = np.random.default_rng(2)
    rows, dim = 8000, 384
    w = (rng.standard_t(4, (rows, dim)) * rng.gamma(2, 1, (rows, 1))).ravel()
    groups = np.repeat(np.arange(rows), dim)
    pick, weight = uniform.search_sample(np.abs(w), groups, rows)
    assert len(pick) <= rows * uniform.PER_GROUP and weight.sum() == pytest.approx(len(w), rel=0.02)
    outermost = np.argmax(np.abs(w).reshape(rows, dim), axis=1) + dim * np.arange(rows)
    assert np.isin(outermost, pick).all()

    def error():
        codes, scale, zero = uniform.fit_uniform(w, groups, rows, 3, False)
        return float(np.mean(((codes - zero[groups]) * scale[groups] - w) ** 2))

    sampled, full = error(), uniform.SAMPLE_VALUES
    try:
        uniform.SAMPLE_VALUES = len(w)
        exact = error()
    finally:
        uniform.SAMPLE_VALUES = full
    assert sampled == pytest.approx(exact, rel=0.01)


def test_the_cosine_leaves_out_padded_rows_when_told_the_real_tokens():
    rng = np.random.default_rng(3)
    teacher = rng.standard_normal((4, 6, 8))
    tokens = np.arange(6)[None, :] < np.array([[6], [4], [2], [5]])
    student = teacher.copy()
    student[~tokens] = rng.standard_normal((int((~tokens).sum()), 8))  # only pads differ
    assert Cosine().drop([teacher], [student]).points > 1.0
    assert Cosine().drop([teacher], [student], tokens=tokens).points == pytest.approx(0.0, abs=1e-9)
    student[0, 0] += 1.0  # a real token differs: counted
    assert Cosine().drop([teacher], [student], tokens=tokens).points > 0
    pooled = rng.standard_normal((4, 8))  # no token axis: every entry counts
    assert Cosine().drop([pooled], [pooled + 1], tokens=tokens).points == Cosine().drop([pooled], [pooled + 1]).points


def test_the_pooled_cosine_sees_an_error_every_token_shares_that_the_per_token_cosine_dilutes():
    rng = np.random.default_rng(4)
    tokens = np.arange(6)[None, :] < np.array([[6], [4], [3], [5]])
    common = rng.standard_normal((4, 1, 8))
    teacher = (0.3 * common + rng.standard_normal((4, 6, 8))) * tokens[..., None]
    shift = 0.2 * rng.standard_normal((4, 1, 8))  # the same error on every token of a sentence
    student = teacher + shift
    student[~tokens] = 5.0  # pads: read by neither
    flat, mean = Cosine().drop([teacher], [student], tokens=tokens), pick("cosine:mean", [teacher], ["o"], None)
    assert mean.label == "cosine:mean" and pick("cosine", [teacher], ["o"], None).label == "cosine"
    pooled = mean.drop([teacher], [student], tokens=tokens)
    t, s = (np.stack([x[i, tokens[i]].mean(0) for i in range(4)]) for x in (teacher, student))
    expected = 100 * (1 - np.sum(t * s, 1) / np.linalg.norm(t, axis=1) / np.linalg.norm(s, axis=1))
    assert pooled.points == pytest.approx(expected.mean()) and pooled.points > 2 * flat.points
    first = pick("cosine:first", [teacher], ["o"], None).drop([teacher], [student], tokens=tokens)
    assert first.points == pytest.approx(Cosine().drop([teacher[:, 0]], [student[:, 0]]).points)
    with pytest.raises(EvonnxError, match="cosine:max"):
        pick("cosine:max", [teacher], ["o"], None)


def test_real_tokens_read_an_additive_mask():
    mask = np.zeros((3, 1, 1, 5), np.float32)
    mask[1, ..., 3:] = -1e4
    calib = CalibData({"input_ids": np.ones((3, 5), np.int64), "attention_mask": mask}, None, "t")
    assert real_tokens(calib).tolist() == [[True] * 5, [True] * 3 + [False] * 2, [True] * 5]


def test_a_size_bound_without_time_for_the_bit_allocation_gets_its_cheapest_tier_not_the_full_search():
    """A time limit that pays for no bit allocation fixes 8 bits; a --max-bytes bound needs the allocation, and
    got the full search (every scheme and bit width on all samples: still running after 10 min of a 240 s limit
    on a YOLOX detector) until the cheapest tier was given instead."""
    assert Budget.fit(10, 1.0, 20.0).bits is None
    cheap = Budget.fit(10, 1.0, 20.0, needs_bits=True).bits
    assert cheap["schemes"] == ["uniform/channel/rate"] and "scale_from" in cheap and 1 in cheap["bits"]
    assert cheap["sensitivity_share"] < 1 and cheap["max_joint"] < 100
    steps = default_pipeline(0.5, "auto", 1.0, 20.0, budget=Budget.fit(10, 1.0, 20.0, needs_bits=True),
                             target_bytes=1000).passes
    assert steps[-1].name == "bit-allocation" and steps[-1].config.schemes == cheap["schemes"]
    assert steps[-1].config.target_bytes == 1000
    assert Budget.fit(10, 1.0, 10_000, needs_bits=True).bits == Budget.fit(10, 1.0, 10_000).bits
    # a size bound may need 1-bit grids, which the short tiers leave out (the ViT's 20x was out of reach at 2-8)
    light = Budget.bits_for(10, 1.0, 44 + 10 * 7 * 0.5)
    sized = Budget.bits_for(10, 1.0, 44 + 10 * 8 * 0.5, needed=True)
    assert 1 not in light["bits"] and sized["bits"] == [1, *light["bits"]] and sized["schemes"] == light["schemes"]


def test_a_short_time_limit_measures_layers_alone_on_a_share_of_the_samples():
    # besides the layers' measurements: 2 passes for the folds' activations and outputs, 2 for the other tensors'
    # rounding
    assert Budget.bits_for(10, 1.0, 10_000) == {"max_joint": 1000}
    full = len(BitAllocation.Config().schemes) * len(BitAllocation.Config().bits) + 1
    share = Budget.bits_for(10, 1.0, 44 + 10 * full * 0.6)  # full search, layers alone on 60 % of the samples
    assert share == {"sensitivity_share": 0.6, "max_joint": 40}
    light = Budget.bits_for(10, 1.0, 44 + 10 * 7 * 0.5)
    assert light["schemes"] == ["uniform/channel/rate+gptq"] and light["sensitivity_share"] == 0.5
    assert "scale_from" not in light
    # GPTQ's inverse factors come off the time too, once more for each fold the tier cross-fits: 5 x 1 s here
    slower = Budget.bits_for(10, 1.0, 44 + 10 * 7 * 0.5, costs=BitCosts(inverses=1.0))
    assert slower["schemes"] == light["schemes"] and slower["sensitivity_share"] == round(30 / 70, 3)
    # GPTQ's rounding of 20M weights fits, its fits again without each fold do not: measured in-sample; the
    # time reserved for quantizing them at 8 bits comes back to the tier that replaces it
    reserved = FIXED_BITS_SECONDS_PER_PARAM * 20_000_000
    fits = GPTQ_SECONDS_PER_PARAM * 20_000_000 * 6  # six grids each
    in_sample = Budget.bits_for(10, 1.0, 44 + 10 * 7 * 0.5 + fits - reserved, costs=BitCosts(params=20_000_000))
    assert in_sample == {**light, "cross_fit": 0}
    # too little for every grid of every layer: each layer measured once, at one grid, on a share
    scaled = Budget.bits_for(10, 1.0, 16 + 10 * 0.5)
    assert scaled["scale_from"] == "uniform/channel/rate+gptq@3" and scaled["sensitivity_share"] == 0.5
    assert scaled["max_joint"] == 12 and scaled["half_share"] > 1  # nor the half rates' sweeps
    # GPTQ's rounding of 20M weights costs more than the time left: rounding to nearest instead
    plain = Budget.bits_for(10, 1.0, 16 + 10 * 0.5 + 20, costs=BitCosts(params=20_000_000))
    assert plain["scale_from"] == "uniform/channel/rate@3" and plain["schemes"] == ["uniform/channel/rate"]
    assert Budget.bits_for(10, 1.0, 16 + 10 * 0.1) is None
    seconds = 44 + 10 * 7 * 0.5  # the bits get 30 % of a pruning run's search, all of a run that prunes nothing
    assert Budget.fit(10, 1.0, seconds).bits["scale_from"]
    assert Budget.fit(10, 1.0, seconds, prunes=False).bits == light
    # fitting each quantization of 20M weights costs time too: the full search no longer fits what it did
    assert Budget.bits_for(10, 1.0, 44 + 10 * full * 0.6, costs=BitCosts(params=20_000_000)) != share
    heavy = BitCosts(params=20_000_000)
    assert Budget.full_bits_seconds(10, 1.0, costs=heavy) > Budget.full_bits_seconds(10, 1.0) + 100
    # a weight holding a tenth of the entries also tries the half rates between the listed ones (4 of LIGHT_BITS):
    # measured alone and fitted too
    halved = Budget.bits_for(10, 1.0, 44 + 10 * 7 * 0.5, costs=BitCosts(heavy_layers=10))
    assert halved["schemes"] == light["schemes"] and halved["sensitivity_share"] == round(35 / (70 + 40), 3)
    fitted = Budget.bits_for(10, 1.0, 44 + 10 * 7 * 0.5, costs=BitCosts(heavy=2_000_000, heavy_layers=10))
    assert fitted["sensitivity_share"] < halved["sensitivity_share"]




def test_a_fallback_of_searched_bits_is_reckoned_by_the_schemes_it_rounds_with():
    """The guard's deadline: redoing GPTQ's rounding costs its sweeps and inverse factors, a rate grid far less; a
    rate-grid search reckoned as GPTQ lost its fallbacks (cnn-25M shipped 8 bits instead of 8.7x)."""
    state = load_state(corpus.mlp(d_in=256, hidden=512).SerializeToString())
    names = state.targets
    rate = fallback_seconds(0.0, state, {n: "uniform/channel/rate@3" for n in names})
    gptq = fallback_seconds(0.0, state, {n: "uniform/channel/rate+gptq@3" for n in names})
    entries = sum(state.table[n].size for n in names)
    assert rate == pytest.approx(RATE_SECONDS_PER_PARAM * entries)
    assert gptq > GPTQ_SECONDS_PER_PARAM * entries  # and the inverse factors
    assert fallback_seconds(1.0, state, None) == 0.0

def test_the_search_time_leaves_room_to_encode_and_quantize_every_weight_at_8_bits():
    """What is reserved out of the limit grows with the weights: a model whose 8-bit quantization and encoding
    alone take most of the limit gets only the floor share to search."""
    from types import SimpleNamespace

    from evonnx.passes.compress.timing import (ENCODE_SECONDS_PER_PARAM, FINISH_FORWARDS, MIN_SEARCH_SHARE,
                                               PASS_FORWARDS, search_seconds)

    def state(params):
        return SimpleNamespace(table=SimpleNamespace(targets=[SimpleNamespace(size=params)]))

    per_param = ENCODE_SECONDS_PER_PARAM + FIXED_BITS_SECONDS_PER_PARAM
    small = search_seconds(100.0, 5.0, 1.0, state(1000))
    assert small == pytest.approx(100 - 5 - (FINISH_FORWARDS + PASS_FORWARDS) - per_param * 1000)
    large = int(80 / per_param)
    assert search_seconds(100.0, 5.0, 1.0, state(large)) == pytest.approx(MIN_SEARCH_SHARE * 100)

def test_the_scaled_bit_allocation_measures_each_layer_once_and_caps_the_joint_search():
    state = load_state(corpus.mlp(seed=3, d_in=24, hidden=48, classes=6).SerializeToString(), label="mlp")
    x = np.random.default_rng(0).standard_normal((64, 24)).astype(np.float32)
    ctx = PassContext(calib=CalibData({"x": x}, None, "synthetic"))
    out = get_pass("bit-allocation")(schemes=["uniform/channel/rate"], bits=[2, 3, 5, 8], metric="kl", max_kl=0.02,
                                     scale_from="uniform/channel/rate@3", max_joint=5, nontarget="exact").run(state, ctx)
    record = out.history[-1]
    layers = len(record["sensitivity"])
    assert layers >= 2 and record["sensitivity_evaluations"] == layers
    assert record["joint_evaluations"] <= 5 and record["joint_loss"] <= 0.02
    for name, rows in record["sensitivity"].items():  # damage grows with the weight error's power, 0 when exact
        damage = {label: d for label, _, d, _ in rows}
        assert damage["raw"] == 0.0
        assert damage["uniform/channel/rate@2"] > damage["uniform/channel/rate@3"] > damage["uniform/channel/rate@5"]
        assert damage["uniform/channel/rate@5"] > damage["uniform/channel/rate@8"] > 0


def test_the_bit_allocation_measures_layers_alone_on_an_even_spread_of_the_samples():
    state = load_state(corpus.mlp(seed=3, d_in=24, hidden=48, classes=6).SerializeToString(), label="mlp")
    x = np.random.default_rng(0).standard_normal((64, 24)).astype(np.float32)
    ctx = PassContext(calib=CalibData({"x": x}, None, "synthetic"))
    out = get_pass("bit-allocation")(schemes=["uniform/channel/rate"], bits=[3, 6], metric="kl", max_kl=0.05,
                                     sensitivity_share=0.2, nontarget="exact").run(state, ctx)
    record = out.history[-1]
    assert record["sensitivity_samples"] == 13 and record["joint_loss"] <= 0.05
    assert set(record["allocation"].values()) <= {"uniform/channel/rate@3", "uniform/channel/rate@6"}


def test_a_searched_allocation_falls_back_first_to_the_same_grids_a_bit_wider():
    from evonnx.passes.compress.guard import bit_record, finer

    state = load_state(corpus.mlp(seed=3, d_in=24, hidden=48, classes=6).SerializeToString(), label="mlp")
    x = np.random.default_rng(0).standard_normal((64, 24)).astype(np.float32)
    ctx = PassContext(calib=CalibData({"x": x}, None, "synthetic"))
    searched = get_pass("bit-allocation")(schemes=["uniform/channel/rate", "codebook"], bits=[2, 3, 8], metric="kl",
                                          max_kl=0.05, nontarget="int8", tighter=[]).run(state, ctx)
    chosen = {n: QuantSpec.parse(label) for n, label in searched.history[-1]["allocation"].items()}
    assert any(spec.scheme != "raw" and spec.bits < 8 for spec in chosen.values())
    record = searched.history[-1]
    damage = {n: next(d for label, _, d, _ in record["sensitivity"][n] if label == record["allocation"][n])
              for n in chosen}
    fallbacks = list(finer(bit_record(searched), state, ctx, keep=[]))
    whats = [what for what, _, _ in fallbacks]
    assert whats[-2:] == ["the searched bits, 1 wider a layer", "the searched bits, 2 wider a layer"]
    assert len(whats) == 2 and max(damage.values()) < 0.75 * sum(damage.values())  # no smaller set to widen first
    for extra, (_, wider, steps) in zip((1, 2), fallbacks[-2:]):
        assert [s["name"] for s in steps] == ["dead-units", "quantize"]
        for name, spec in chosen.items():
            record = wider.quant[name]
            if spec.scheme == "raw":
                assert record.scheme == "raw"
                continue
            assert record.scheme == spec.scheme
            assert QuantSpec.parse(wider.history[-1]["settings"]["layers"][name]).bits == min(spec.bits + extra, 8)
        assert {r["scheme"] for r in wider.history[-1]["nontarget"]} == {"int8"}
    assert bit_record(state) is None and list(finer(None, state, ctx, keep=[])) == []  # nothing to widen


def test_a_searched_allocation_falls_back_smallest_first_on_the_same_search_within_smaller_shares_of_its_budget():
    from evonnx.passes.compress.guard import _estimated_bytes, bit_record, finer

    state = load_state(corpus.mlp(seed=3, d_in=24, hidden=48, classes=6).SerializeToString(), label="mlp")
    x = np.random.default_rng(0).standard_normal((64, 24)).astype(np.float32)
    ctx = PassContext(calib=CalibData({"x": x}, None, "synthetic"))
    searched = get_pass("bit-allocation")(schemes=["uniform/channel/rate"], bits=[1, 2, 3, 4, 6, 8], metric="kl",
                                          max_kl=0.05, nontarget="exact", tighter=[0.8, 0.5, 0.2]).run(state, ctx)
    record = bit_record(searched)
    tighter = record["tighter"]
    assert tighter and [t["share"] for t in tighter] == sorted((t["share"] for t in tighter), reverse=True)
    sizes = [record["chosen_bytes"]] + [t["bytes"] for t in tighter]
    for alt in tighter:
        assert alt["joint_loss"] <= alt["share"] * record["limit"] + 1e-12 and alt["allocation"] != record["allocation"]
    assert sizes == sorted(sizes) and sizes[-1] > sizes[0]  # a smaller budget buys its loss with bytes
    fallbacks = {what: candidate.history[-1]["settings"]["layers"] for what, candidate, _ in
                 finer(record, state, ctx, keep=[])}
    for alt in tighter:
        assert fallbacks[f"the search within {alt['share']:.0%} of the budget"] == alt["allocation"]
    assert any(what.startswith("the searched bits") for what in fallbacks)
    estimates = [_estimated_bytes(record, layers, state) for layers in fallbacks.values()]
    assert estimates == sorted(estimates)
    assert [_estimated_bytes(record, alt["allocation"], state) for alt in tighter] == pytest.approx(
        [t["bytes"] for t in tighter], rel=1e-3)


def test_the_first_fallback_widens_the_fewest_layers_holding_most_of_the_damage():
    from evonnx.passes.compress.guard import _most_damage

    record = {"allocation": {"a": "uniform/channel/rate@3", "b": "codebook@2", "c": "raw", "d": "uniform/channel/rate@2"},
              "sensitivity": {"a": [("uniform/channel/rate@3", 10.0, 0.5, 0.1)],
                              "b": [("codebook@2", 10.0, 0.3, 0.1), ("codebook@3", 20.0, 0.1, 0.0)],
                              "c": [("raw", 40.0, 0.0, 0.0)], "d": [("uniform/channel/rate@2", 5.0, 0.2, 0.1)]}}
    assert _most_damage(record) == ["a", "b"]  # 0.8 of the 1.0 summed: a alone (0.5) is not three quarters
    record["sensitivity"]["a"][0] = ("uniform/channel/rate@3", 10.0, 3.0, 0.1)
    assert _most_damage(record) == ["a"]


def test_a_weight_holding_most_entries_tries_half_rates_and_its_first_fallback_widens_it_half_a_bit():
    from evonnx.passes.bit_allocation import half_rates
    from evonnx.passes.compress.guard import finer

    rate3, sym3 = QuantSpec.parse("uniform/channel/rate@3"), QuantSpec.parse("uniform/channel/sym@3")
    halves = half_rates([rate3, QuantSpec.parse("uniform/channel/rate@4"), sym3, QuantSpec.parse("uniform/channel/sym@4")])
    assert [s.label for s in halves[4:]] == ["uniform/channel/rate@3.5"]
    assert QuantSpec.parse("uniform/channel/rate@3.5").label == "uniform/channel/rate@3.5"
    with pytest.raises(EvonnxError, match="fractional"):
        QuantSpec.parse("uniform/channel/sym@3.5")

    state = load_state(corpus.mlp(seed=3, d_in=24, hidden=48, classes=6).SerializeToString(), label="mlp")
    x = np.random.default_rng(0).standard_normal((64, 24)).astype(np.float32)
    ctx = PassContext(calib=CalibData({"x": x}, None, "synthetic"))
    searched = get_pass("bit-allocation")(schemes=["uniform/channel/rate"], bits=[2, 3, 8], metric="kl", max_kl=0.05,
                                          half_share=0.5, nontarget="exact").run(state, ctx)
    record = searched.history[-1]
    sizes = {n: state.table[n].size for n in record["sensitivity"]}
    big = max(sizes, key=sizes.get)
    assert sizes[big] >= 0.5 * sum(sizes.values())
    for name, rows in record["sensitivity"].items():
        labels = {label for label, _, _, _ in rows}
        assert ("uniform/channel/rate@2.5" in labels) == (name == big) and "uniform/channel/rate@3.5" not in labels
    # the big weight at 2 bits holds nearly all of the damage: the first widening widens it alone, by half a bit
    record["allocation"], record["tighter"] = {n: "uniform/channel/rate@2" for n in sizes}, []
    for name, rows in record["sensitivity"].items():
        rows[:] = [(label, b, (10.0 if name == big else 0.1) if label.endswith("@2") else d, drop)
                   for label, b, d, drop in rows]
    what, first, _ = next(iter(finer(record, state, ctx, keep=[])))
    assert what.startswith("the searched bits, half a bit wider")
    layers = first.history[-1]["settings"]["layers"]
    assert layers == {n: "uniform/channel/rate@2.5" if n == big else "uniform/channel/rate@2" for n in sizes}


def test_the_tables_gram_probes_come_off_the_bits_time():
    """The embedding tables' Gram probes cost passes over the samples: counted in every tier that rounds with GPTQ,
    so a limit that pays for the light tier without them falls to the next one with them."""
    seconds = 44 + 10 * 7 * 0.5  # the light tier, each layer alone on half the samples
    light = Budget.bits_for(10, 1.0, seconds)
    assert light["schemes"] == ["uniform/channel/rate+gptq"] and light["sensitivity_share"] == 0.5
    probed = Budget.bits_for(10, 1.0, seconds, costs=BitCosts(probes=30.0))  # each layer measured at one grid only
    assert probed["scale_from"] == "uniform/channel/rate+gptq@3" and probed["cross_fit"] == 0
    # the rounding to nearest probes nothing
    rate = Budget.bits_for(10, 1.0, 16 + 10 * 0.5 + 1, costs=BitCosts(probes=1e6))
    assert rate["schemes"] == ["uniform/channel/rate"]

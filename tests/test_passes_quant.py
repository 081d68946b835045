"""Quantization schemes: round-trip error bounds, zeros kept, survivors never zero, bit-exact records."""
import numpy as np
import pytest

import corpus
from evonnx.formats.record import encode_record, read_header, read_payload
from evonnx.formats.tensor import QuantizedTensor, dequantize
from evonnx.passes.base import PassContext, get_pass
from evonnx.passes.engine.calib import synthetic
from evonnx.passes.quant.kmeans import kmeans_1d
from evonnx.passes.quant.layer import QuantSpec, never_zero, quantize_weight, survivors
from evonnx.passes.quant.gptq import act_order, compensated_codes, inverse_factor
from evonnx.passes.quant.refit import refit_centroids
from evonnx.passes.quant.search import knapsack
from evonnx.passes.quant.sizing import coded_bytes
from evonnx.passes.sparsity.layers import Layer
from evonnx.passes.state import load_state


def sparse_weight(seed=0, shape=(24, 40), sparsity=0.7):
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal(shape) * rng.uniform(0.2, 3.0, (shape[0], 1))).astype(np.float32)
    w[np.abs(w) < np.quantile(np.abs(w), sparsity)] = 0
    return w


def reference_grid_sse(w, keep, bits, symmetric, axis):
    """Per-group squared error of the plain min/max grid (no clipping search), computed from scratch."""
    top = 2 ** bits - 1
    rows = np.moveaxis(w, axis, 0).reshape(w.shape[axis], -1) if axis is not None else w.reshape(1, -1)
    kept = np.moveaxis(keep, axis, 0).reshape(rows.shape) if axis is not None else keep.reshape(1, -1)
    sse = []
    for r, k in zip(rows.astype(np.float64), kept):
        v = r[k]
        if v.size == 0 or v.min() == v.max():
            sse.append(0.0)
            continue
        lo, hi = (-np.abs(v).max(), np.abs(v).max()) if symmetric else (v.min(), v.max())
        s = (hi - lo) / top
        q = np.clip(np.rint((v - lo) / s), 0, top) * s + lo
        sse.append(np.sum((q - v) ** 2))
    return np.array(sse)


@pytest.mark.parametrize("bits", [1, 2, 4, 8])
@pytest.mark.parametrize("family", ["uniform/channel/sym", "uniform/channel/asym", "uniform/tensor/sym",
                                    "uniform/tensor/asym"])
def test_uniform_error_bounds(family, bits):
    w = sparse_weight(bits)
    keep = survivors(w, None)
    spec = QuantSpec.parse(family, bits)
    q = quantize_weight("w", w, keep, spec, channel_axis=0)
    t = q.tensor
    axis = 0 if spec.per_channel else None
    assert t.scheme == "uniform" and t.bits == bits and t.axis == axis and q.bumped == 0
    assert t.codes.max() < 2 ** bits
    # within the grid's span every survivor is at most half a step away
    scale = (t.scale if axis is None else t.scale[:, None]) * np.ones_like(w)
    zp = (t.zero_point if axis is None else t.zero_point[:, None]) * np.ones_like(w)
    lo, hi = (0 - zp) * scale, (2 ** bits - 1 - zp) * scale
    inside = keep & (w >= lo - scale / 2) & (w <= hi + scale / 2)
    err = np.abs(q.weight - w)
    assert np.all(err[inside] <= scale[inside] / 2 * (1 + 1e-5) + 1e-7)
    assert np.all(err[keep & ~inside] <= np.maximum(w - hi, lo - w)[keep & ~inside] * (1 + 1e-5))
    # the clipping search never does worse than the plain min/max grid, group by group
    got = np.square(q.weight.astype(np.float64) - w)
    got = got.sum(axis=1) if axis == 0 else np.array([got.sum()])
    want = reference_grid_sse(w, keep, bits, spec.symmetric, axis)
    assert np.all(got <= want * (1 + 1e-4) + 1e-9)
    if bits == 8:
        assert np.linalg.norm(q.weight - w) / np.linalg.norm(w) < 0.01


def test_symmetric_grid_is_mid_rise_and_one_bit_is_a_sign_quantizer():
    w = sparse_weight(3)
    keep = survivors(w, None)
    q = quantize_weight("w", w, keep, QuantSpec.parse("uniform/channel/sym@1"), channel_axis=0)
    assert np.all(q.tensor.zero_point == 0.5)
    assert np.array_equal(np.sign(q.weight[keep]), np.sign(w[keep]))
    assert np.all(np.abs(q.weight[keep]) == (q.tensor.scale[:, None] / 2 * np.ones_like(w))[keep])


@pytest.mark.parametrize("bits", [1, 2, 3, 5])
def test_codebook_is_nearest_centroid_and_beats_linear_init(bits):
    w = sparse_weight(10 + bits)
    keep = survivors(w, None)
    q = quantize_weight("w", w, keep, QuantSpec.parse("codebook", bits), channel_axis=0)
    c = q.tensor.centroids.astype(np.float64)
    v = w[keep].astype(np.float64)
    assert 1 <= c.size <= 2 ** bits
    dist = np.abs(v[:, None] - c[None, :])
    assert np.all(np.abs(q.weight[keep] - v) <= dist.min(axis=1) + 1e-6)
    linear = np.linspace(v.min(), v.max(), 2 ** bits)
    init_sse = np.sum(np.min((v[:, None] - linear[None, :]) ** 2, axis=1))
    assert np.sum((q.weight[keep] - v) ** 2) <= init_sse


def test_codebook_is_exact_when_centroids_suffice():
    values = np.repeat(np.array([-2.5, -0.75, 0.5, 1.25, 4.0], np.float32), 20)
    codes, centroids = kmeans_1d(values, 8)
    np.testing.assert_array_equal(centroids[codes], values)


def test_raw_is_lossless_and_zeros_stay_zero():
    w = sparse_weight(4)
    keep = survivors(w, None)
    q = quantize_weight("w", w, keep, QuantSpec.parse("raw"), channel_axis=0)
    assert q.weight.tobytes() == w.tobytes()


@pytest.mark.parametrize("spec", ["uniform/channel/sym@2", "uniform/tensor/asym@3", "codebook@2", "raw"])
def test_masked_entries_are_exact_zero_and_survivors_never_zero(spec):
    w = sparse_weight(5)
    mask = np.random.default_rng(1).random(w.shape) < 0.8  # a keep-mask from a sparsity pass
    w_masked = np.where(mask, w, 0).astype(np.float32)
    keep = survivors(w_masked, mask)
    q = quantize_weight("w", w_masked, keep, QuantSpec.parse(spec), channel_axis=0)
    assert np.all(q.weight[~keep] == 0) and not np.any(np.signbit(q.weight[~keep]))
    assert np.all(q.weight[keep] != 0)
    assert np.array_equal(q.tensor.mask, keep)


def test_a_survivor_on_a_zero_level_is_bumped_to_its_side():
    w = np.array([[0.01, -0.02, 1.0, -1.0, 0.4, 0.0]], np.float32)
    keep = survivors(w, None)
    codes = np.array([2, 2, 3, 1, 2])  # mid-tread grid: code 2 is 0.0
    t = QuantizedTensor.uniform("w", w.shape, "float32", 2, codes, np.float32(0.5), np.float32(2.0), keep)
    q = never_zero(t, w, keep)
    assert q.bumped == 3 and not q.fallback
    np.testing.assert_array_equal(q.weight, np.array([[0.5, -0.5, 0.5, -0.5, 0.5, 0.0]], np.float32))
    cb = QuantizedTensor.codebook("w", w.shape, "float32", 2, np.array([1, 1, 2, 0, 1]),
                                  np.array([-1.0, 0.0, 0.8], np.float32), keep)
    q = never_zero(cb, w, keep)
    assert q.bumped == 3
    np.testing.assert_array_equal(q.weight, np.array([[0.8, -1.0, 0.8, -1.0, 0.8, 0.0]], np.float32))


def test_refit_solves_the_layer_output_least_squares():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((256, 40)) * rng.uniform(0.1, 3.0, 40) + rng.standard_normal(40)
    w = sparse_weight(6)
    keep = survivors(w, None)
    layer = Layer("w", w.shape, kind="gemm", trans_w=True)
    plain = quantize_weight("w", w, keep, QuantSpec.parse("codebook@3"), 0)
    refit = quantize_weight("w", w, keep, QuantSpec.parse("codebook+refit@3"), 0,
                            refit=lambda c, k: refit_centroids(layer, x.T @ x, w, keep, c, k))
    np.testing.assert_array_equal(plain.tensor.codes, refit.tensor.codes)
    # the same problem as an explicit regression: output columns X A_k^T, one per centroid
    codes = np.full(w.shape, -1)
    codes[keep] = plain.tensor.codes
    k = plain.tensor.centroids.size
    design = np.stack([(x @ (codes == j).T).ravel() for j in range(k)], axis=1)
    want, *_ = np.linalg.lstsq(design, (x @ w.T.astype(np.float64)).ravel(), rcond=None)
    np.testing.assert_allclose(refit.tensor.centroids, want, rtol=1e-4, atol=1e-5)
    def out_err(q):
        return np.linalg.norm(x @ (q.weight - w).T.astype(np.float64))
    assert out_err(refit) < out_err(plain)


def test_gptq_rounding_lowers_the_layer_output_error_on_the_same_grid():
    """Correlated inputs (near rank 8, as real activations are): compensating each column's rounding error in the later ones beats rounding to nearest
    on the layer output, with the same per-channel grid, pruned entries still zero and survivors nonzero."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((512, 8)) @ rng.standard_normal((8, 40)) + 0.3 * rng.standard_normal((512, 40))
    w = sparse_weight(6, sparsity=0.2)
    keep = survivors(w, None)
    layer = Layer("w", w.shape, kind="gemm", trans_w=True)  # W stored [out, K]: channels are the rows
    u = inverse_factor(x.T @ x)

    def compensate(scale, zero, top):
        return layer.from_mat(compensated_codes(layer.to_mat(w), layer.to_mat(keep), u, scale, zero, top))

    for label in ("uniform/channel/rate@3", "uniform/channel/sym@3"):
        plain = quantize_weight("w", w, keep, QuantSpec.parse(label), 0)
        gptq = quantize_weight("w", w, keep, QuantSpec.parse(label.replace("@", "+gptq@")), 0, compensate=compensate)
        np.testing.assert_array_equal(gptq.tensor.scale, plain.tensor.scale)  # the grid is the same
        assert not np.array_equal(gptq.tensor.codes, plain.tensor.codes)
        assert np.all(gptq.weight[~keep] == 0) and np.all(gptq.weight[keep] != 0)
        assert dequantize(gptq.tensor).tobytes() == gptq.weight.tobytes()

        def out_err(q):
            return np.linalg.norm(x @ (q.weight - w).T.astype(np.float64))
        assert out_err(gptq) < 0.6 * out_err(plain)
    assert QuantSpec.parse("uniform/channel/rate+gptq@3").label == "uniform/channel/rate+gptq@3"


def test_gptq_damped_by_its_row_count_does_better_on_rows_it_never_saw():
    """A Gram of about as many rows as inputs (48 sentences' tokens for a 1,536-wide layer), inputs whose
    variance spreads over every direction (heavy-tailed, eigenvalues falling as 1 / i): the sweep fitted to
    those rows alone overfits them, no better than rounding to nearest on fresh rows; damped by K / rows it
    loses a little on them and gains on fresh rows."""
    rng = np.random.default_rng(0)
    spread = np.arange(1, 97) ** -0.5 * np.linalg.qr(rng.standard_normal((96, 96)))[0]

    def rows(n):
        return rng.standard_t(4, (n, 96)) @ spread.T

    seen, fresh = rows(100), rows(4000)
    w = rng.standard_normal((64, 96)).astype(np.float32)
    keep = np.ones(w.shape, bool)
    layer = Layer("w", w.shape, kind="gemm", trans_w=True)
    plain = quantize_weight("w", w, keep, QuantSpec.parse("uniform/channel/rate@3"), 0)

    def rounded(u):
        return layer.from_mat(compensated_codes(w, keep, u, plain.tensor.scale, plain.tensor.zero_point, 255.0))

    def err(codes, x):
        q = (codes.astype(np.float32) - plain.tensor.zero_point[:, None]) * plain.tensor.scale[:, None]
        return np.linalg.norm(x @ (q - w).T.astype(np.float64))

    gram = seen.T @ seen
    fitted, damped = rounded(inverse_factor(gram)), rounded(inverse_factor(gram, len(seen)))
    assert err(fitted, seen) < err(damped, seen)
    assert err(damped, fresh) < 0.9 * min(err(fitted, fresh), err(plain.tensor.codes.reshape(w.shape), fresh))


def test_gptq_in_act_order_rounds_the_loud_inputs_first_and_does_better():
    """Inputs whose energies differ by e^±2 (as a transformer's features do): sweeping the columns by falling
    energy leaves the most columns to take up the loud ones' rounding error; the codes come back in place."""
    rng = np.random.default_rng(0)
    loud = np.exp(rng.normal(0, 1.0, 96))
    mix = rng.standard_normal((96, 96)) * 0.3 + np.eye(96)

    def rows(n):
        return (rng.standard_t(4, (n, 96)) @ mix) * loud

    seen, fresh = rows(2000), rows(4000)
    w = rng.standard_normal((64, 96)).astype(np.float32)
    keep = rng.random(w.shape) > 0.1
    grid = quantize_weight("w", w, keep, QuantSpec.parse("uniform/channel/rate@3"), 0).tensor
    gram, order = seen.T @ seen, act_order(seen.T @ seen)
    assert np.all(np.diff(np.diag(gram)[order]) <= 0)

    def rounded(u, order=None):
        codes = compensated_codes(w, keep, u, grid.scale, grid.zero_point, 255.0, order)
        assert np.all(codes[~keep] == 0)
        q = np.where(keep, (codes.astype(np.float32) - grid.zero_point[:, None]) * grid.scale[:, None], 0)
        return np.linalg.norm(fresh @ (q - w).T.astype(np.float64))

    natural = rounded(inverse_factor(gram, len(seen)))
    assert rounded(inverse_factor(gram[np.ix_(order, order)], len(seen)), order) < 0.85 * natural


def test_grams_leave_out_the_rows_of_padding_tokens():
    from evonnx.passes.quant.refit import _rows

    real = np.array([[True, True, False, False], [True, True, True, False]])  # [samples, tokens]
    matmul = Layer("w", (8, 3), kind="matmul")
    assert _rows(matmul, (2, 4, 8), real).tolist() == [0, 1, 4, 5, 6]
    assert _rows(matmul, (2, 4, 8), None).tolist() == list(range(8))  # no attention mask: every row
    assert _rows(matmul, (6, 8), real).tolist() == list(range(6))  # no token axis to match: every row


def test_knapsack_matches_brute_force():
    rng = np.random.default_rng(0)
    for _ in range(30):
        costs = [rng.random(rng.integers(1, 5)) for _ in range(3)]
        values = [rng.random(len(c)) for c in costs]
        budget = rng.random() * 1.5
        combos = [(sum(costs[i][o] for i, o in enumerate(c)), sum(values[i][o] for i, o in enumerate(c)))
                  for c in np.ndindex(*[len(c) for c in costs])]
        feasible = [v for c, v in combos if c <= budget]
        got = knapsack(costs, values, budget, bins=20000)
        if not feasible:
            assert got is None
            continue
        assert sum(costs[i][o] for i, o in enumerate(got)) <= budget
        assert sum(values[i][o] for i, o in enumerate(got)) <= min(feasible) + 1e-3


def test_size_estimate_tracks_the_container_record():
    rng = np.random.default_rng(7)
    w = (rng.standard_normal((64, 200)) * (rng.random((64, 200)) < 0.1)).astype(np.float32)
    keep = survivors(w, None)
    for spec in ["uniform/channel/sym@3", "codebook@4", "uniform/tensor/asym@6"]:
        t = quantize_weight("fc.weight", w, keep, QuantSpec.parse(spec), 0).tensor
        estimate, actual = coded_bytes(t)["total"], len(encode_record(t))
        assert abs(estimate - actual) < 0.05 * actual


def test_pass_records_decode_to_the_simulated_weights_bit_for_bit():
    state = load_state(corpus.conv_net().SerializeToString())
    mask = np.random.default_rng(2).random((256, 3)) < 0.3
    state = state.replace(weights={"w": np.where(mask, state.original("w"), 0).astype(np.float32)}, masks={"w": mask})
    ctx = PassContext(calib=synthetic(state.model, 64))
    quantize = get_pass("quantize")(scheme="codebook+refit", bits=3, min_size=1, layers={"k": "uniform/tensor/asym@5"})
    out = quantize.run(state, ctx)
    assert set(out.quant) == {"k", "w"} and np.array_equal(out.masks["w"], mask)
    for name, t in out.quant.items():
        data = encode_record(t)
        decoded, _ = read_payload(read_header(data, name))
        assert dequantize(decoded).tobytes() == out.weights[name].tobytes()
    # an independent recomputation from the stored codes, without dequantize
    t = out.quant["w"]
    rebuilt = np.zeros(t.shape, np.float32)
    rebuilt[t.mask] = t.centroids[t.codes]
    assert rebuilt.tobytes() == out.weights["w"].tobytes()
    t = out.quant["k"]
    rebuilt = ((t.codes.astype(np.float32) - t.zero_point) * t.scale).reshape(t.shape)
    assert rebuilt.tobytes() == out.weights["k"].tobytes()
    assert np.all(out.weights["w"][~mask] == 0) and np.all(out.weights["w"][mask & (state.current("w") != 0)] != 0)
    record = out.history[-1]
    assert record["pass"] == "quantize" and {r["name"] for r in record["layers"]} == {"k", "w"}
    assert all({"scheme", "bits", "est_bytes", "rel_error", "damage_alone"} <= set(r) for r in record["layers"])


def test_nontarget_tensors_exact_by_default_and_rounded_only_on_request():
    state = load_state(corpus.mlp().SerializeToString())
    ctx = PassContext(calib=synthetic(state.model, 32))
    exact = get_pass("quantize")(bits=6, min_size=1).run(state, ctx)
    assert set(exact.quant) == {"w1", "w2"} and "b1" not in exact.weights
    half = get_pass("quantize")(bits=6, min_size=1, nontarget="fp16").run(state, ctx)
    b1 = state.original("b1")
    assert half.weights["b1"].tobytes() == b1.astype(np.float16).astype(np.float32).tobytes()
    assert dequantize(half.quant["b1"]).tobytes() == half.weights["b1"].tobytes()
    assert [r["name"] for r in half.history[-1]["nontarget"]] == ["b1", "b2"]
    eight = get_pass("quantize")(bits=6, min_size=1, nontarget="int8").run(state, ctx)
    t = eight.quant["b1"]
    assert (t.scheme, t.bits, t.axis) == ("uniform", 8, None)
    assert dequantize(t).tobytes() == eight.weights["b1"].tobytes()
    step = (b1.max() - b1.min()) / 255
    assert np.abs(eight.weights["b1"] - b1).max() <= step / 2 + 1e-6
    assert {r["bits"] for r in eight.history[-1]["nontarget"]} == {8}


def test_kmeans_codes_weights_already_on_a_grid_exactly():
    from evonnx.passes.quant.kmeans import kmeans_1d
    grid = np.linspace(-1, 1, 100).astype(np.float32)
    values = np.random.default_rng(0).choice(grid, 5000)
    codes, centroids = kmeans_1d(values, 128)
    assert np.array_equal(centroids[codes], values)  # 100 distinct values fit 128 centroids: no error
    codes, centroids = kmeans_1d(values, 16)
    assert len(centroids) <= 16 and not np.array_equal(centroids[codes], values)


def test_the_clipping_search_of_a_large_tensor_samples_without_losing_its_outliers():
    """Above 2 x SAMPLE_VALUES values the grid search measures a weighted sample that keeps every group's
    outermost values (what clipping cuts): its grids are as good as the full search's."""
    import evonnx.passes.quant.uniform as uniform
    rng = np.random.default_rng(3)
    w = (rng.standard_t(3, (256, 4200)) * rng.gamma(2, 1, (256, 1))).ravel()
    groups = np.repeat(np.arange(256), 4200)
    pick, weight = uniform.search_sample(np.abs(w), groups, 256)
    assert len(pick) < len(w) // 3 and weight.sum() == pytest.approx(len(w), rel=0.02)
    outermost = np.argmax(np.abs(w).reshape(256, -1), axis=1) + 4200 * np.arange(256)
    assert np.isin(outermost, pick).all()

    def error(bits):
        codes, scale, zero = uniform.fit_uniform(w, groups, 256, bits, True)
        return float(np.mean(((codes - zero[groups]) * scale[groups] - w) ** 2))

    sampled = [error(bits) for bits in (2, 4, 8)]
    full = uniform.SAMPLE_VALUES
    try:
        uniform.SAMPLE_VALUES = len(w)
        exact = [error(bits) for bits in (2, 4, 8)]
    finally:
        uniform.SAMPLE_VALUES = full
    assert sampled == pytest.approx(exact, rel=0.01)


@pytest.mark.parametrize("spec", ["uniform/channel/sym@3", "uniform/channel/asym@4", "uniform/channel/rate@2.5"])
@pytest.mark.parametrize("axis", [0, 1, 2])
def test_channel_grids_in_slices_equal_one_fit(monkeypatch, spec, axis):
    """A per-channel weight fitted a block of channels at a time (SLICE entries) gets the record of one fit."""
    import evonnx.passes.quant.layer as layer

    rng = np.random.default_rng(3)
    w = (rng.standard_normal((6, 10, 14)) * rng.uniform(0.2, 3.0, (6, 10, 14))).astype(np.float32)
    w[rng.random(w.shape) < 0.4] = 0
    keep = survivors(w, None)
    whole = quantize_weight("w", w, keep, QuantSpec.parse(spec), axis)
    monkeypatch.setattr(layer, "SLICE", w.size // w.shape[axis] * 2 + 1)  # two channels a block, a short last one
    sliced = quantize_weight("w", w, keep, QuantSpec.parse(spec), axis)
    assert sliced.tensor.axis == whole.tensor.axis == axis
    np.testing.assert_array_equal(sliced.tensor.codes, whole.tensor.codes)
    np.testing.assert_array_equal(sliced.tensor.scale, whole.tensor.scale)
    np.testing.assert_array_equal(sliced.tensor.zero_point, whole.tensor.zero_point)
    np.testing.assert_array_equal(sliced.weight, whole.weight)
    np.testing.assert_array_equal(sliced.weight != 0, keep)


def test_layers_reading_one_input_share_one_gram_and_its_factor():
    """Q, K and V read the same rows: one Gram (X^T X of those rows) and one GPTQ factor serve the three, also
    once pooled over calibration parts; the layer reading another input has its own."""
    from evonnx.passes.engine.calib import CalibData
    from evonnx.passes.quant.apply import Quantizer

    state = load_state(corpus.shared_input().SerializeToString(), label="qkv")
    x = np.random.default_rng(1).standard_normal((12, 5, 16)).astype(np.float32)
    parts = [Quantizer(state, PassContext(calib=CalibData({"x": part}, None, "calib")).engine(state))
             for part in (x[:6], x[6:])]
    pooled = Quantizer.pooled(parts)
    pooled.can_refit("wq")  # measures the parts' Grams
    for q, rows in ((parts[0], x[:6]), (pooled, x)):
        gram = q.gram("wq")
        assert q.gram("wk") is gram and q.gram("wv") is gram and q.gram("wo") is not gram
        flat = rows.reshape(-1, 16).astype(np.float64)
        np.testing.assert_allclose(gram, flat.T @ flat, rtol=1e-5, atol=1e-4)
        assert q.rows["wq"] == q.rows["wv"] == len(flat)
        for name in ("wq", "wk", "wv", "wo"):
            q.quantize(name, QuantSpec.parse("uniform/channel/rate+gptq@3"))
        u = q.factor("wq")[1].strips[0]
        assert q.factor("wk")[1].strips[0] is u and q.factor("wv")[1].strips[0] is u
        assert q.factor("wo")[1].strips[0] is not u

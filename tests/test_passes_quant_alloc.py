"""bit-allocation: the chosen plan meets its budget (checked by an independent engine) and compresses."""
import numpy as np
import pytest

import corpus
from evonnx.errors import EvonnxError
from evonnx.formats.tensor import dequantize
from evonnx.passes.base import PassContext, get_pass
from evonnx.passes.engine.calib import CalibData
from evonnx.passes.engine.fitness import FitnessEngine
from evonnx.passes.engine.metrics import kl_divergence
from evonnx.passes.quant.sizing import HEADER_BYTES, coded_bytes
from evonnx.passes.state import load_state

SCHEMES = ["uniform/channel/sym", "codebook"]


@pytest.fixture(scope="module")
def setup():
    state = load_state(corpus.mlp(seed=3, d_in=24, hidden=48, classes=6).SerializeToString(), label="mlp")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((600, 24)).astype(np.float32)
    probe = FitnessEngine(state.model, CalibData({"x": x}, None, "probe"), state.targets, device="cpu", held=state.held)
    labels = probe.teacher[0].argmax(1)
    labels[:60] = rng.integers(0, 6, 60)  # some label noise: the teacher is not 100 % right
    calib = CalibData({"x": x}, labels, "synthetic+labels")
    return state, calib


def independent_metrics(state, calib, weights):
    engine = FitnessEngine(state.model, calib, state.table.weights, device="cpu", batch_size=128, held=state.held)
    start, end = engine.evaluate([{}, weights])  # every changed tensor: rounded biases too
    return start, end


def raw_bytes(state):
    return sum(state.table[n].size * 4 for n in state.targets)


@pytest.mark.parametrize("search", ["knapsack", "greedy"])
def test_accuracy_budget_is_met_and_the_model_shrinks(setup, search):
    state, calib = setup
    ctx = PassContext(calib=calib)
    out = get_pass("bit-allocation")(search=search, schemes=SCHEMES, max_drop=2.0).run(state, ctx)
    record = out.history[-1]
    assert record["metric"] == "accuracy" and record["limit"] == 2.0
    names = state.table.weights  # biases too: bit-allocation rounds them when the budget allows (nontarget auto)
    engine = FitnessEngine(state.model, calib, names, device="cpu", batch_size=128, held=state.held)
    was = engine.outputs({})[0].argmax(1) == calib.labels
    now = engine.outputs({n: out.current(n) for n in names})[0].argmax(1) == calib.labels
    lost, gained = np.sum(was & ~now), np.sum(~was & now)
    assert 100 * (lost - gained + 2 * np.sqrt(lost + gained)) / len(was) <= 2.0  # the drop's upper bound, z = 2
    assert sum(coded_bytes(out.quant[n])["total"] for n in record["allocation"]) == pytest.approx(record["est_bytes"],
                                                                                                  rel=1e-3)
    assert record["est_bytes"] < 0.35 * raw_bytes(state)  # well under fp32: 8 bits would be 0.25 + side info
    for name, t in out.quant.items():
        assert dequantize(t).tobytes() == out.weights[name].tobytes()
        assert name not in record["allocation"] or record["allocation"][name].startswith(t.scheme)


def test_kl_budget_is_met(setup):
    state, calib = setup
    ctx = PassContext(calib=calib)
    out = get_pass("bit-allocation")(schemes=SCHEMES, metric="kl", max_kl=2e-3).run(state, ctx)
    start, end = independent_metrics(state, calib, out.weights)
    assert end.fitness - start.fitness <= 2e-3
    assert out.history[-1]["est_bytes"] < 0.35 * raw_bytes(state)


def test_size_budget_is_met_and_a_larger_budget_is_no_worse(setup):
    state, calib = setup
    ctx = PassContext(calib=calib)
    fits = {}
    for target in (1200, 2400):
        out = get_pass("bit-allocation")(schemes=SCHEMES, target_bytes=target).run(state, ctx)
        item = {"exact": 4, "int8": 1}.get(out.history[-1]["nontarget_mode"], 2)
        fixed = sum(state.table[n].size * item + HEADER_BYTES + len(n) for n in ("b1", "b2"))
        assert out.history[-1]["est_bytes"] + fixed <= target
        fits[target] = independent_metrics(state, calib, out.weights)[1].fitness
    assert fits[2400] <= fits[1200]
    # auto decides the biases' rounding first, so the weights get the bytes int8 biases leave free
    rounded, exact = (get_pass("bit-allocation")(schemes=SCHEMES, target_bytes=1200, nontarget=mode).run(state, ctx)
                      for mode in ("auto", "exact"))
    assert rounded.history[-1]["nontarget_mode"] == "int8" and rounded.quant["b1"].bits == 8
    assert rounded.history[-1]["est_bytes"] > exact.history[-1]["est_bytes"]
    with pytest.raises(EvonnxError, match="target_bytes"):
        get_pass("bit-allocation")(schemes=SCHEMES, bits=[2, 3], target_bytes=300).run(state, ctx)


def test_a_size_target_measures_no_more_candidates_than_max_joint(setup, monkeypatch):
    """The time plan pays for `max_joint` joint measurements; a size target measured up to 8 knapsack answers
    for each of three roundings of the other tensors (24 passes over the calibration set where a YOLOX's plan
    paid for 14: 57 s over its search time)."""
    from evonnx.passes.quant.allocate import Searcher
    state, calib = setup
    calls = []
    real = Searcher.by_size
    monkeypatch.setattr(Searcher, "by_size", lambda self, budget, measure, *a: real(
        self, budget, lambda opts: calls.append(1) or measure(opts), *a))
    get_pass("bit-allocation")(schemes=SCHEMES, target_bytes=2400).run(state, PassContext(calib=calib))
    free = len(calls)
    calls.clear()
    run = get_pass("bit-allocation")(schemes=SCHEMES, target_bytes=2400, max_joint=3)
    out = run.run(state, PassContext(calib=calib))
    assert free > 3 and len(calls) == 3  # one a rounding mode
    assert out.history[-1]["est_bytes"] <= 2400


def test_allocation_after_pruning_keeps_masks_and_zeros(setup):
    state, calib = setup
    w1 = state.original("w1")
    mask = np.abs(w1) > np.quantile(np.abs(w1), 0.8)
    sparse = state.replace(weights={"w1": np.where(mask, w1, 0).astype(np.float32)}, masks={"w1": mask})
    ctx = PassContext(calib=calib)
    out = get_pass("bit-allocation")(schemes=SCHEMES, metric="kl", max_kl=5e-3).run(sparse, ctx)
    assert np.array_equal(out.masks["w1"], mask) and np.array_equal(out.quant["w1"].mask, mask)
    assert np.all(out.weights["w1"][~mask] == 0) and np.all(out.weights["w1"][mask] != 0)
    # the budget is measured from the pruned model, not from the teacher
    engine = FitnessEngine(state.model, calib, state.targets, device="cpu", held=state.held)
    ref = engine.outputs({"w1": sparse.current("w1")})[0]
    got = engine.outputs({n: out.weights[n] for n in state.targets})[0]
    assert kl_divergence(ref, got) <= 5e-3


def test_nontarget_auto_rounds_the_other_tensors_only_within_the_budget(setup):
    state, calib = setup
    ctx = PassContext(calib=calib)
    loose = get_pass("bit-allocation")(schemes=SCHEMES, max_drop=2.0).run(state, ctx)
    record = loose.history[-1]
    assert record["nontarget_mode"] == "int8" and record["nontarget_losses"]["int8"] <= 2.0
    assert {r["name"] for r in record["nontarget"]} == {"b1", "b2"}
    assert loose.quant["b1"].bits == 8 and dequantize(loose.quant["b1"]).tobytes() == loose.weights["b1"].tobytes()
    kept = get_pass("bit-allocation")(schemes=SCHEMES, max_drop=2.0, keep=["w2"]).run(state, ctx)
    assert "w2" not in kept.quant and "w2" not in {r["name"] for r in kept.history[-1]["nontarget"]}
    exact = get_pass("bit-allocation")(schemes=SCHEMES, metric="kl", max_kl=1e-12).run(state, ctx)
    record = exact.history[-1]
    assert record["nontarget_mode"] == "exact" and record["nontarget_losses"]["fp16"] > 1e-12
    assert "b1" not in exact.quant and "b1" not in exact.weights


def test_by_size_keeps_the_best_measured_of_the_answers_that_fit():
    """Summed single-layer damages favour shrinking layer a; the joint measurement says a must stay large."""
    from evonnx.passes.quant.allocate import Option, Searcher
    from evonnx.passes.quant.layer import QuantSpec

    def layer(sizes_damages):
        return [Option(QuantSpec("uniform", b), None, s, d, 0.0) for b, (s, d) in enumerate(sizes_damages, 2)]

    table = {"a": layer([(10, 3.0), (20, 1.0), (40, 0.0)]), "b": layer([(10, 2.5), (20, 2.0), (40, 0.0)])}
    searcher = Searcher(table, lambda opts: 0.0, 0.0)
    plain, _ = searcher.by_size(60)
    assert searcher.bytes(plain) <= 60
    joint = {"a": {10: 9.0, 20: 5.0, 40: 0.0}, "b": {10: 0.1, 20: 0.1, 40: 0.0}}
    measured = lambda opts: sum(joint[n][o.bytes] for n, o in opts.items())  # noqa: E731
    chosen, scores = searcher.by_size(60, measured, tries=8, step=0.1)
    assert all(searcher.bytes(c) <= 60 for c in scores) and len(scores) > 1
    assert scores[chosen] == min(scores.values()) and searcher.options(chosen)["a"].bytes == 40


def test_under_a_pooled_cosine_the_layers_are_weighed_by_the_pooled_outputs():
    """y = x @ wa + c @ wb over 8 tokens, x centred over the tokens: mean-pooled, wa's errors cancel and only wb's
    reach the sentence vector. Weighed by the KL of the token outputs the two matrices look alike (and got the
    same bits); weighed by what `cosine:mean` reads, wb gets the bytes."""
    from onnx import TensorProto, helper, numpy_helper
    from evonnx.passes.engine.tasks import Cosine

    rng = np.random.default_rng(0)
    wa, wb = (numpy_helper.from_array(rng.standard_normal((32, 32)).astype(np.float32), n) for n in ("wa", "wb"))
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "wa"], ["a"]), helper.make_node("MatMul", ["c", "wb"], ["b"]),
         helper.make_node("Add", ["a", "b"], ["y"])], "pooled",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 8, 32]),
         helper.make_tensor_value_info("c", TensorProto.FLOAT, ["n", 1, 32])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 8, 32])], [wa, wb])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)
    state = load_state(model.SerializeToString(), label="pooled")
    x = rng.standard_normal((64, 8, 32)).astype(np.float32)
    calib = CalibData({"x": x - x.mean(1, keepdims=True), "c": rng.standard_normal((64, 1, 32)).astype(np.float32)},
                      None, "centred tokens")
    out = get_pass("bit-allocation")(schemes=["uniform/channel/sym"], bits=[2, 3, 4, 5, 6, 8], target_bytes=1600,
                                     nontarget="exact").run(state, PassContext(calib=calib, metric=Cosine("mean")))
    assert out.quant["wa"].bits == 2 and out.quant["wb"].bits > 4


def test_measured_against_the_incoming_model_with_its_refitted_biases(setup):
    """Pruning with re-fit changes the biases: the allocation's reference and candidates must use them
    (not the model file's), so its measured joint KL is the KL between the model it got and the one it gives."""
    state, calib = setup
    ctx = PassContext(calib=calib)
    pruned = get_pass("magnitude")(sparsity=0.6, refit=True).run(state, ctx)
    assert not np.array_equal(pruned.current("b1"), state.current("b1"))
    out = get_pass("bit-allocation")(schemes=["uniform/channel/sym"], bits=[3], metric="kl", max_kl=10.0,
                                     nontarget="exact").run(pruned, ctx)
    engine = FitnessEngine(state.model, calib, state.table.weights, device="cpu", held=state.held)
    incoming, given = engine.outputs({n: pruned.current(n) for n in state.table.weights}), \
        engine.outputs({n: out.current(n) for n in state.table.weights})
    assert out.history[-1]["joint_loss"] == pytest.approx(kl_divergence(incoming[0], given[0]), rel=1e-4)

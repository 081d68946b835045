"""Budgets are contracts: checked on held-out samples no pass fits to, with safer fallbacks, exit 3 and
nothing written when nothing is within budget."""
import json
import math

import numpy as np
import onnx
import pytest

import corpus
from cli import evonnx
from evonnx.errors import BudgetError
from evonnx.passes.compress import compress
from evonnx.passes.engine.calib import CalibData


@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
    """A tiny classifier and 200 calibration samples labelled by the model itself (so it is right on all)."""
    import onnxruntime as ort

    root = tmp_path_factory.mktemp("budget")
    model = root / "mlp.onnx"
    onnx.save_model(corpus.mlp(d_in=32, hidden=64, classes=10), str(model))
    x = np.random.default_rng(0).standard_normal((200, 32)).astype(np.float32)
    labels = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0].argmax(1)
    calib = root / "calib.npz"
    np.savez(calib, x=x, labels=labels)
    return root, model, calib


def quiet():
    return {"progress": False}


def test_held_out_share_is_stratified_disjoint_and_whole_batches():
    labels = np.array([0] * 80 + [1] * 20)
    data = CalibData({"x": np.arange(100, dtype=np.float32)[:, None]}, labels, "c")
    fit, held = data.split(0.25, seed=3)
    assert held.num_samples == 25 and fit.num_samples == 75
    assert np.bincount(held.labels).tolist() == [20, 5]  # each class in proportion
    together = np.sort(np.concatenate([fit.inputs["x"][:, 0], held.inputs["x"][:, 0]]))
    assert together.tolist() == list(range(100))  # disjoint, nothing lost
    fit4, held4 = data.split(0.25, seed=3, multiple=4)  # a fixed batch of 4
    assert held4.num_samples % 4 == 0 and fit4.num_samples % 4 == 0
    assert data.split(0.25)[1] is not None and CalibData({"x": np.ones((1, 2))}, None, "one").split(0.25)[1] is None


def test_an_unmet_budget_writes_nothing_and_exits_3(labelled, tmp_path):
    root, model, calib = labelled
    out, report = tmp_path / "m.evx", tmp_path / "report"
    done = evonnx("compress", model, "-o", out, "--calib", calib, "--sparsity", "0.95", "--bits", "2",
                  "--max-drop", "0.1", "--report", report)
    assert done.returncode == 3, done.stderr
    assert "no result within --max-drop 0.1" in done.stderr and "Traceback" not in done.stderr
    assert not out.exists() and not report.exists()
    with pytest.raises(BudgetError):
        compress(model, out, calib=calib, sparsity=0.95, bits=2, max_drop=0.1, **quiet())


def test_the_default_falls_back_to_a_safer_result_within_budget(labelled, tmp_path):
    root, model, calib = labelled
    result = compress(model, tmp_path / "d.evx", calib=calib, max_drop=0.0, time_limit=20, **quiet())
    held = result.held_out
    assert result.metric == "accuracy" and result.max_drop == 0.0
    assert held["n"] == 50 and "held-out" in held["data"] and held["upper"] <= 0.0
    assert result.calibration["n"] == 150
    if result.rejected:  # what was beyond the budget is named, with its bound
        assert all(r["upper"] > 0.0 for r in result.rejected) and result.shipped != "the searched result"


def test_summary_names_metric_and_which_figures_are_held_out(labelled, tmp_path):
    root, model, calib = labelled
    done = evonnx("compress", model, "-o", tmp_path / "s.evx", "--calib", calib, "--sparsity", "0.5", "--bits", "8",
                  "--max-drop", "inf", "--metric", "cosine", "--json")
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["metric"] == "cosine" and summary["max_drop"] is None  # inf: reported only
    assert summary["held_out"]["n"] == 50 and summary["held_out"]["points"] >= 0
    text = evonnx("compress", model, "-o", tmp_path / "t.evx", "--calib", calib, "--sparsity", "0.5", "--bits", "8",
                  "--max-drop", "inf")
    assert "drop on held-out data (50 samples no pass fitted to)" in text.stdout
    assert "(optimistic)" in text.stdout


def test_random_inputs_need_consent(labelled, tmp_path):
    root, model, _ = labelled
    refused = evonnx("compress", model, "-o", tmp_path / "r.evx")
    assert refused.returncode == 2 and "--synthetic-ok" in refused.stderr and not (tmp_path / "r.evx").exists()
    done = evonnx("compress", model, "-o", tmp_path / "r.evx", "--synthetic-ok", "--samples", "32",
                  "--sparsity", "0.5", "--bits", "8", "--max-drop", "inf")
    assert done.returncode == 0, done.stderr
    assert "warning: no --calib" in done.stderr  # log lines go to stderr, results to stdout


def test_python_calibration_and_a_callable_metric(labelled, tmp_path):
    root, model, calib = labelled
    arrays = dict(np.load(calib))
    batches = [{"x": arrays["x"][i:i + 50], "labels": arrays["labels"][i:i + 50]} for i in range(0, 200, 50)]

    class Reader:  # the protocol of onnxruntime.quantization.CalibrationDataReader
        def __init__(self):
            self.batches = iter(batches)

        def get_next(self):
            return next(self.batches, None)

    def top1_same(teacher, student):  # a user's score: higher is better
        return 100.0 * float(np.mean(teacher[0].argmax(1) == student[0].argmax(1)))

    options = dict(sparsity=0.5, bits=8, max_drop=math.inf, progress=False)
    runs = {name: compress(model, tmp_path / f"{name}.evx", calib=source, metric=top1_same, **options)
            for name, source in (("npz", calib), ("batches", batches), ("reader", Reader()))}
    assert len({(tmp_path / f"{name}.evx").read_bytes() for name in runs}) == 1  # the same data, the same bytes
    builtin = compress(model, tmp_path / "builtin.evx", calib=arrays, metric="agreement", **options)
    assert runs["npz"].metric == "top1_same"
    assert runs["reader"].held_out["points"] == pytest.approx(builtin.held_out["points"])


def test_past_its_deadline_the_guard_leaves_a_rejected_group_for_the_last():
    """Under a time limit the guard does not build the rest of a group whose candidate failed once the
    deadline has passed: it goes on to the last group, which holds what the run reserved time for."""
    from evonnx.passes.base import PassContext
    from evonnx.passes.compress.guard import Guard, searched_first
    from evonnx.passes.engine.tasks import per_sample, pick
    from evonnx.passes.state import load_state

    state = load_state(corpus.mlp(d_in=32, hidden=64, classes=10).SerializeToString())
    x = np.random.default_rng(0).standard_normal((96, 32)).astype(np.float32)
    fit, held = CalibData({"x": x}, None, "c").split(0.5, seed=0)
    ctx = PassContext(fit)
    engine = ctx.engine(state)
    task = pick("cosine", per_sample(engine.teacher, engine.axes), engine.output_names, None, engine.axes)
    broken = state.replace(weights={n: np.zeros_like(state.original(n)) for n in state.targets})
    built = []

    def finer():
        for i in range(3):
            built.append(i)
            yield f"finer {i}", broken, []

    def safer():
        yield "the exact weights", state, []

    meta = lambda steps: {}  # noqa: E731
    shipped = Guard(state, ctx, held, task, 1.0).ship(searched_first(broken, [], finer(), safer()), engine, meta,
                                                      deadline=0.0)
    assert shipped.what == "the exact weights"
    assert [r["result"] for r in shipped.rejected] == ["the searched result"] and built == []
    shipped = Guard(state, ctx, held, task, 1.0).ship(searched_first(broken, [], finer(), safer()), engine, meta)
    assert len(shipped.rejected) == 4 and built == [0, 1, 2]

"""`--sparsity auto` keeps the sparsest trial within its share of --max-drop; `--report` writes markdown, a
JSON summary and plots, and only the markdown when matplotlib is missing."""
import json
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import corpus
from evonnx.formats.container import read_evx
from evonnx.passes.compress import compress
from evonnx.passes.compress.auto import AUTO_SHARE, LADDER
from evonnx.passes.compress.report import write_report

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def auto_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("auto")
    teacher = corpus.mlp(d_in=32, hidden=64, classes=10)
    onnx.save_model(teacher, str(root / "mlp.onnx"))
    x = np.random.default_rng(0).standard_normal((256, 32)).astype(np.float32)
    session = ort.InferenceSession(teacher.SerializeToString(), providers=["CPUExecutionProvider"])
    np.savez(root / "calib.npz", x=x, labels=session.run(None, {"x": x})[0].argmax(1))
    result = compress(root / "mlp.onnx", root / "mlp.evx", calib=root / "calib.npz", sparsity="auto", max_drop=30.0,
                      report=root / "report", progress=False)  # no time limit: the same search on any machine
    return root, result


def test_auto_keeps_the_sparsest_trial_within_budget(auto_run):
    root, result = auto_run
    trials = result.auto
    assert trials and trials[0]["sparsity"] == LADDER[0]
    assert all(t["limit"] == AUTO_SHARE * 30.0 and (t["drop"] <= t["limit"]) == t["kept"] for t in trials)
    kept, failed, after_failure = 0.0, None, 0
    for t in trials:  # the ladder climbs until a failure, then bisects (twice at most) below it
        if failed is None:
            assert t["sparsity"] in LADDER and t["sparsity"] > kept
        else:
            assert kept < t["sparsity"] < failed
            after_failure += 1
        kept, failed = (t["sparsity"], failed) if t["kept"] else (kept, t["sparsity"])
    assert after_failure <= 2
    best = max((t["reached"] for t in trials if t["kept"]), default=0.0)
    assert result.sparsity >= best - 1e-3  # dead units and rounding only add zeros
    assert read_evx((root / "mlp.evx").read_bytes()).meta["auto"] == trials
    assert result.shipped.startswith("the search") and result.held_out["upper"] <= 30.0  # searched bits, no 8-bit fallback


def test_report_has_tables_and_plots(auto_run):
    root, result = auto_run
    text = (root / "report" / "report.md").read_text()
    assert "| w1 | matrix | 64x32 | 2,048 |" in text and "## Auto sparsity" in text and "## Passes" in text
    for name in ("layers.png", "fitness.png", "tradeoff.png", "auto.png"):
        assert (root / "report" / name).read_bytes()[:8] == PNG and f"]({name})" in text
    assert json.loads((root / "report" / "summary.json").read_text()) == result.as_dict()
    assert any("generation" in e for e in result.search_log) and "search_log" not in result.as_dict()


def test_report_without_matplotlib_is_markdown_only(auto_run, tmp_path, monkeypatch):
    _, result = auto_run
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    lines = write_report(result, tmp_path / "plain")
    assert any("plots skipped: matplotlib is not installed" in line for line in lines)
    assert "plots skipped" in (tmp_path / "plain" / "report.md").read_text()
    assert not list((tmp_path / "plain").glob("*.png"))


def test_no_bisection_starves_the_bit_allocation(tmp_path, monkeypatch):
    """After a failed rung, a bisection runs only if the time left still pays for the full bit allocation."""
    from evonnx.passes.compress.timing import Budget
    teacher = corpus.mlp(d_in=32, hidden=64, classes=10)
    onnx.save_model(teacher, str(tmp_path / "mlp.onnx"))
    np.savez(tmp_path / "calib.npz", x=np.random.default_rng(0).standard_normal((128, 32)).astype(np.float32))
    options = dict(calib=tmp_path / "calib.npz", metric="cosine", max_drop=0.001, time_limit=20, progress=False)
    both = compress(tmp_path / "mlp.onnx", tmp_path / "a.evx", **options)
    assert [t["kept"] for t in both.auto] == [False, False, False]  # 50 % fails, then two bisections
    monkeypatch.setattr(Budget, "full_bits_seconds", staticmethod(lambda *_, **__: 1e9))
    starved = compress(tmp_path / "mlp.onnx", tmp_path / "b.evx", **options)
    assert [t["sparsity"] for t in starved.auto] == [LADDER[0]]


def test_a_rung_whose_share_cannot_pay_for_sensitivity_curves_splits_its_target_by_lamp(tmp_path, monkeypatch):
    """Curves a rung cannot finish would take its time and be thrown away: such a rung splits by LAMP scores
    (and keeps its re-fits while the curves' passes alone would fit, and re-fitting every layer once would take
    at most half its time)."""
    from evonnx.passes.compress import timing
    assert timing.curves_or_lamp(18, 0.7, 50.0) == {"allocation": "lamp", "refit": False}
    assert timing.curves_or_lamp(2, 0.01, 100.0) == {}
    assert timing.curves_or_lamp(18, 0.1, 100.0) == {"allocation": "lamp"}  # the passes fit, not with re-fits
    # least-squares re-fits of wide layers cost more than the passes: 7 levels of 10 s, then a finish of 60 s
    assert timing.curves_or_lamp(2, 0.01, 100.0, refits=10.0) == {"allocation": "lamp"}
    assert timing.curves_or_lamp(2, 0.01, 100.0, refits=60.0) == {"allocation": "lamp", "refit": False}
    teacher = corpus.mlp(d_in=32, hidden=64, classes=10)
    onnx.save_model(teacher, str(tmp_path / "mlp.onnx"))
    np.savez(tmp_path / "calib.npz", x=np.random.default_rng(0).standard_normal((128, 32)).astype(np.float32))
    options = dict(calib=tmp_path / "calib.npz", metric="cosine", max_drop=30.0, time_limit=60, progress=False)
    splits = {}
    for forwards in (1e-9, 1e9):  # curves nearly free, then never affordable
        monkeypatch.setattr(timing, "CURVE_FORWARDS", forwards)
        result = compress(tmp_path / "mlp.onnx", tmp_path / f"{forwards}.evx", **options)
        rungs = [h["settings"] for h in result.history if h["pass"] == "directed-evolution"]
        assert rungs, "a rung within 30 points is accepted"
        splits[forwards] = {(s["allocation"], s["refit"]) for s in rungs}
    assert splits[1e9] == {("lamp", True)} and splits[1e-9] == {("sensitivity", True)}

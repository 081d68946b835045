"""The directed-evolution pass: exact targets, determinism, budgets, kill-and-resume, better than random."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import corpus
from evonnx.passes.base import PassContext, get_pass
from evonnx.passes.sparsity.targets import lamp
from evonnx.passes.engine.calib import synthetic
from evonnx.passes.sparsity import targets as tg
from evonnx.passes.state import load_state

SMALL = dict(steps=3, population=8, generations=3, fitness_samples=96, refit_samples=160, chunk=0.05)


def model():
    return corpus.mlp(seed=4, d_in=24, hidden=48, classes=8)


def run(workdir=None, seed=0, m=None, **config):
    state = load_state((m or model()).SerializeToString())
    ctx = PassContext(synthetic(state.model, 160, seed=5), device="cpu", seed=seed, workdir=workdir,
                      progress=False)
    return get_pass("directed-evolution")(**{**SMALL, **config}).run(state, ctx)


def test_exact_per_layer_targets_and_record():
    out = run(layer_sparsity={"w1": 0.9, "w2": 0.5})
    assert np.count_nonzero(out.current("w1") == 0) == tg.zero_count(24 * 48, 0.9)
    assert np.count_nonzero(out.current("w2") == 0) == tg.zero_count(48 * 8, 0.5)
    assert np.array_equal(out.masks["w1"], out.current("w1") != 0)
    rec = out.history[-1]
    assert rec["pass"] == "directed-evolution" and rec["stop_reason"] == "done"
    assert rec["evaluations"] > 0 and rec["fitness"] > 0 and rec["cost_ratio"] > 0


def test_global_target_is_allocated_exactly_on_a_conv_net():
    out = run(m=corpus.conv_net(), sparsity=0.8, refit=True)
    sizes = {"k": 36, "w": 768}
    zeros = sum(np.count_nonzero(out.current(n) == 0) for n in sizes)
    assert zeros == tg.zero_count(sum(sizes.values()), 0.8)
    assert out.history[-1]["layer_sparsity"]["k"] != pytest.approx(out.history[-1]["layer_sparsity"]["w"])


def test_deterministic_for_a_seed():
    a, b = run(sparsity=0.8, seed=7), run(sparsity=0.8, seed=7)
    for n in ("w1", "w2", "b1", "b2"):
        assert np.array_equal(a.current(n), b.current(n))


def test_beats_random_pruning_at_equal_sparsity():
    targets = {"w1": 0.85, "w2": 0.6}
    de = run(layer_sparsity=targets, refit=False)
    state = load_state(model().SerializeToString())
    ctx = PassContext(synthetic(state.model, 160, seed=5), device="cpu", progress=False)
    rnd = get_pass("random")(layer_sparsity=targets, refit=False, fitness_samples=96).run(state, ctx)
    assert de.history[-1]["fitness"] < 0.5 * rnd.history[-1]["fitness"]


def test_evaluation_budget_stops_with_a_valid_state():
    out = run(sparsity=0.9, max_evaluations=60)
    rec = out.history[-1]
    assert rec["stop_reason"] == "max_evaluations"
    assert 60 <= rec["evaluations"] < 60 + 3 * SMALL["population"]
    assert 0 < rec["sparsity"] < 0.9
    finished = run(sparsity=0.9, max_evaluations=60, on_budget="finish").history[-1]
    assert finished["stop_reason"] == "max_evaluations" and finished["sparsity"] == pytest.approx(0.9, abs=1e-3)


def test_a_checkpoint_holds_survival_credit_for_the_layers_searched_only(tmp_path):
    """A run stopped early has searched few layers: credit arrays the size of every layer would be twice the model
    in memory and in each checkpoint."""
    run(workdir=tmp_path, sparsity=0.9, max_evaluations=30, refit=False)
    pass_dir = tmp_path / "directed-evolution"
    with np.load(pass_dir / "checkpoint.npz") as z:
        names = json.loads(str(z["__header__"]))["__groups__"]
    log = [json.loads(line) for line in (pass_dir / "log.jsonl").read_text().splitlines()]
    searched = {e["layer"] for e in log if "generation" in e}
    assert set(names["credit_sums"]) == searched == set(names["credit_counts"])
    assert 0 < len(searched) < len(load_state(model().SerializeToString()).targets)



def test_time_limit_during_the_sensitivity_phase_splits_by_lamp_and_finishes(caplog):
    caplog.set_level("INFO", logger="evonnx")
    state = load_state(model().SerializeToString())
    ctx = PassContext(synthetic(state.model, 160, seed=5), device="cpu", progress=False)
    out = get_pass("directed-evolution")(**SMALL, sparsity=0.8, time_limit=1e-9, on_budget="finish").run(state, ctx)
    rec = out.history[-1]
    assert rec["stop_reason"] == "time_limit" and rec["sensitivity"] == {}
    weights = {n: state.original(n) for n in rec["layer_sparsity"]}
    assert rec["layer_sparsity"] == pytest.approx(lamp(weights, 0.8), abs=1e-3)
    assert rec["sparsity"] == pytest.approx(0.8, abs=1e-3)
    assert "split by LAMP scores" in caplog.text


def test_a_finish_re_fits_only_the_layers_its_time_limit_pays_for(monkeypatch, caplog):
    """A search stopped early re-fits a layer in its finish only when the re-fit's estimated cost fits what is
    left of its time limit, else compensates it by SparseGPT if that fits, else keeps its survivors as they are;
    every target is reached."""
    from evonnx.passes.sparsity import common, refit, sparsegpt

    caplog.set_level("INFO", logger="evonnx")
    fitted, compensated = [], []
    real_refit, real_prune = common.refit_layer, sparsegpt.prune
    monkeypatch.setattr(common, "refit_layer",
                        lambda view, *a, **k: fitted.append(view.layer.weight) or real_refit(view, *a, **k))
    monkeypatch.setattr(sparsegpt, "prune", lambda *a, **k: compensated.append(1) or real_prune(*a, **k))
    settings = dict(sparsity=0.8, allocation="lamp", max_evaluations=30, on_budget="finish", time_limit=600.0)
    run(**settings)
    assert fitted and not compensated  # a few microseconds each: re-fitted
    fitted.clear()
    monkeypatch.setattr(refit, "SECONDS_PER_MAC", 1.0)  # each re-fit now reckoned at hours
    out = run(**settings)
    assert fitted == [] and compensated and out.history[-1]["sparsity"] == pytest.approx(0.8, abs=1e-3)
    compensated.clear()
    monkeypatch.setattr(sparsegpt, "SECONDS_PER_MAC", 1.0)  # and SparseGPT's too
    out = run(**settings)
    assert fitted == compensated == [] and out.history[-1]["sparsity"] == pytest.approx(0.8, abs=1e-3)
    assert "no time left to re-fit or compensate" in caplog.text


def test_a_finish_re_fits_no_layer_with_the_time_the_later_layers_compensation_needs(monkeypatch, caplog):
    """Re-fits cost more than SparseGPT: a finish that re-fitted while it could would leave the last layers
    uncompensated. Reckoned on a clock that each re-fit advances 100 s and each compensation 40 s, within 200 s:
    the first layer is re-fitted and every later one compensated, none left as it is."""
    from evonnx.passes import directed_evolution
    from evonnx.passes.sparsity import common, sparsegpt

    caplog.set_level("INFO", logger="evonnx")
    clock, done = [0.0], []
    real_refit, real_prune = common.refit_layer, sparsegpt.prune

    def refit_layer(view, *a, **k):
        clock[0] += 100.0
        done.append("refit")
        return real_refit(view, *a, **k)

    def prune(*a, **k):
        clock[0] += 40.0
        done.append("compensate")
        return real_prune(*a, **k)

    monkeypatch.setattr(directed_evolution._Run, "elapsed", lambda self: clock[0])
    monkeypatch.setattr(common, "refit_layer", refit_layer)
    monkeypatch.setattr(sparsegpt, "prune", prune)
    monkeypatch.setattr(common, "refit_seconds", lambda layers, cfg: 100.0 * sum(l.fast for l in layers))
    monkeypatch.setattr(sparsegpt, "seconds", lambda layers, max_k: 40.0 * sum(l.fast for l in layers))
    out = run(sparsity=0.8, allocation="lamp", max_evaluations=30, on_budget="finish", time_limit=200.0)
    assert done == ["refit"] + ["compensate"] * (len(done) - 1) and len(done) >= 3, done
    assert out.history[-1]["sparsity"] == pytest.approx(0.8, abs=1e-3)
    assert "no time left to re-fit or compensate" not in caplog.text


@pytest.mark.parametrize("forward, searched", [(1e-4, True), (60.0, False)])
def test_a_search_that_cannot_visit_every_layer_once_leaves_the_targets_to_the_finish(monkeypatch, caplog, forward,
                                                                                       searched):
    """A visit costs population x generations candidates of about a forward pass each: at 60 s a pass the 600 s
    limit pays for no sweep of the model's layers, so no candidate is evaluated and the finish reaches every
    target at once; at 0.1 ms the search runs."""
    from evonnx.passes.sparsity import suffix

    caplog.set_level("INFO", logger="evonnx")
    monkeypatch.setattr(suffix.Evaluator, "forward_seconds", lambda self, *a, **k: forward)
    rec = run(sparsity=0.8, allocation="lamp", on_budget="finish", time_limit=600.0).history[-1]
    assert (rec["evaluations"] > 0) == searched and rec["sparsity"] == pytest.approx(0.8, abs=1e-3)
    assert ("the finish alone reaches the targets" in caplog.text) != searched


def test_lamp_keeps_each_layers_largest_weight_and_prunes_the_flat_layer_less():
    rng = np.random.default_rng(0)
    flat = np.ones((10, 10))  # every weight alike: LAMP scores rise slowly, the layer keeps more
    peaked = rng.standard_normal((100, 10)) ** 3
    split = lamp({"flat": flat, "peaked": peaked}, 0.8)
    total = split["flat"] * flat.size + split["peaked"] * peaked.size
    assert total == pytest.approx(0.8 * (flat.size + peaked.size), abs=1)
    assert split["flat"] < 0.8 < split["peaked"] < 1.0


CHILD = """
import sys
sys.path.insert(0, {tests!r})
import test_directed_evolution as t
t.run(workdir={workdir!r}, seed=3, sparsity=0.9, **t.SLOW)
"""
SLOW = dict(steps=6, generations=4, chunk=0.01)


def _position(path: Path):
    try:
        with np.load(path, allow_pickle=False) as z:
            return json.loads(str(z["__header__"]))["position"]
    except (OSError, ValueError, KeyError):
        return None


def test_killed_run_resumes_to_the_same_result(tmp_path):
    work = tmp_path / "killed"
    code = CHILD.format(tests=str(Path(__file__).parent), workdir=str(work))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    child = subprocess.Popen([sys.executable, "-c", code], env=env)
    ckpt = work / "directed-evolution" / "checkpoint.npz"
    deadline = time.time() + 120
    while time.time() < deadline and child.poll() is None:
        pos = _position(ckpt)
        if pos and pos != [1, 0] and pos[0] <= 3:
            break
        time.sleep(0.05)
    assert child.poll() is None, "the run finished before it could be killed"
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    killed_at = _position(ckpt)
    resumed = run(workdir=work, seed=3, sparsity=0.9, **SLOW)
    straight = run(workdir=tmp_path / "straight", seed=3, sparsity=0.9, **SLOW)
    assert killed_at is not None and killed_at != [SLOW["steps"] + 1, 0]
    for n in ("w1", "w2", "b1", "b2"):
        assert np.array_equal(resumed.current(n), straight.current(n))
    assert resumed.history[-1]["evaluations"] == straight.history[-1]["evaluations"]
    log = [json.loads(line) for line in (work / "directed-evolution" / "log.jsonl").read_text().splitlines()]
    ref = [json.loads(line) for line in (tmp_path / "straight" / "directed-evolution" / "log.jsonl").read_text().splitlines()]
    strip = lambda rows: [{k: v for k, v in r.items() if k != "elapsed"} for r in rows]  # noqa: E731
    assert strip(log) == strip(ref)

"""The bit allocation's Grams and GPTQ factors within a memory budget: what does not fit waits in files and comes
back the same, so a run that spills quantizes exactly as one that holds everything."""
import gc
from pathlib import Path

import numpy as np
import pytest

import corpus
from evonnx.passes.base import PassContext, get_pass
from evonnx.passes.engine.calib import CalibData
from evonnx.passes.quant import apply
from evonnx.errors import EvonnxError
from evonnx.passes.quant import spill
from evonnx.passes.quant.spill import Spill
from evonnx.passes.state import load_state


def test_values_beyond_the_budget_wait_in_files_and_come_back_the_same():
    rng = np.random.default_rng(0)
    values = {k: (rng.standard_normal((16, 16)).astype(np.float32), np.arange(3) + k) for k in range(6)}
    one = sum(a.nbytes for a in values[0])
    store = Spill(budget=2 * one)
    for key, value in values.items():
        store[key] = value
        assert store.held() <= 2 * one
    assert len(store.hot) == 2 and len(store.files) == 4
    folder = next(iter(store.files.values())).parent
    for key in [3, 0, 5, 1]:  # read back in another order: least recently used goes to its file
        got = store[key]
        assert all(np.array_equal(a, b) and a.dtype == b.dtype for a, b in zip(got, values[key]))
        assert not got[0].flags.writeable
    store[0] = (np.zeros(3, np.float32),)  # replaced: its old file is gone, the new value is what comes back
    assert np.array_equal(store[0][0], np.zeros(3)) and len(list(folder.iterdir())) == len(store.files)
    del store, got
    gc.collect()
    assert not folder.exists()  # the files go with the store


def test_the_last_value_used_stays_in_memory_even_over_the_budget():
    store = Spill(budget=8)
    store["a"], store["b"] = (np.ones(100),), (np.zeros(100),)
    assert list(store.hot) == ["b"] and "a" in store.files
    assert store["a"][0].sum() == 100 and list(store.hot) == ["a"]


def test_parked_values_skip_memory_and_pop_forgets_them():
    store = Spill(budget=1 << 20)
    store["hot"] = (np.ones(4),)
    store.park("cold", (np.arange(5.0),))
    assert list(store.hot) == ["hot"] and store.written == 40
    assert np.array_equal(store.pop("cold")[0], np.arange(5.0)) and "cold" not in store
    assert not list(Path(store._dir.name).iterdir())
    store.reserve(1 << 20)  # room for a caller's 1 MiB: the store's values go to their files
    assert not store.held() or len(store.hot) == 1


def test_a_full_disk_is_a_clear_error_naming_the_directory_and_leaves_no_partial_file(monkeypatch):
    def full(path, *arrays):
        Path(path).write_bytes(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(spill.np, "savez", full)
    store = Spill(budget=0)
    store["a"] = (np.ones(4),)
    with pytest.raises(EvonnxError, match="No space left on device") as err:
        store["b"] = (np.ones(4),)
    folder = Path(store._dir.name)
    assert str(folder) in str(err.value) and "TMPDIR" in str(err.value) and not list(folder.iterdir())


@pytest.mark.parametrize("cross_fit", [4, 0])
def test_a_bit_allocation_that_spills_its_grams_quantizes_as_one_that_holds_them(monkeypatch, cross_fit):
    """The 64-wide MLP's Grams (16 KiB each) and factors beyond a budget of half its weights (MIN_HELD 0) go to
    files, and the plan and every quantized weight are the same bit for bit."""
    state = load_state(corpus.mlp(seed=3, d_in=64, hidden=64, classes=16).SerializeToString(), label="mlp")
    x = (np.random.default_rng(0).standard_normal((32, 64)) * np.linspace(0.2, 2, 64)).astype(np.float32)
    run = get_pass("bit-allocation")(schemes=["uniform/channel/rate+gptq", "codebook+refit"], bits=[2, 3, 4],
                                     metric="kl", cross_fit=cross_fit)
    held = run.run(state, PassContext(calib=CalibData({"x": x}, None, "calib")))
    monkeypatch.setattr(apply, "MIN_HELD", 0)
    spilled = run.run(state, PassContext(calib=CalibData({"x": x}, None, "calib")))
    assert held.history[-1]["spilled_bytes"] == 0
    assert spilled.history[-1]["spilled_bytes"] >= 3 * 64 * 64 * 4  # three Grams' worth at least
    assert held.history[-1]["allocation"] == spilled.history[-1]["allocation"]
    for name in state.targets:
        np.testing.assert_array_equal(held.current(name), spilled.current(name))


def test_grams_beyond_the_budget_are_written_once_however_many_batches_and_sum_the_same():
    """Eight calibration batches, two 64-wide Grams and a budget of one: the sum that does not fit is parked
    batch by batch and summed after the pass, not read back and written again at every batch (a YOLOX at
    batch 1 wrote 6.6 GB for 104 MiB of Grams so), and it equals the held sum bit for bit."""
    from evonnx.passes.quant.refit import gram_matrices, layer_views
    state = load_state(corpus.mlp(seed=3, d_in=64, hidden=64, classes=16).SerializeToString(), label="mlp")
    x = np.random.default_rng(0).standard_normal((32, 64)).astype(np.float32)
    engine = PassContext(calib=CalibData({"x": x}, None, "calib"), batch_size=4).engine(state)
    layers = layer_views(state, state.targets)
    widths = sorted(layer.mat_shape[1] for layer in layers.values())
    assert len(engine.batches) == 8 and widths == [64, 64]

    def grams(budget):
        store = Spill(budget)
        keys, rows = gram_matrices(state, engine, layers, store, "s")
        written, files = store.written, sorted(Path(store._dir.name).iterdir()) if store._dir else []
        return (written, files, sorted(store.files.values())), {n: np.array(store[k][0]) for n, k in keys.items()}, rows

    _, held, rows = grams(1 << 30)
    (written, files, stored), spilled, spilled_rows = grams(4 * 64 * 64)
    assert written == 4 * 64 * 64 + 4 * 32 * 64  # one Gram out of memory once, the other's 32 rows parked
    assert files == stored  # the parked rows are gone
    assert rows == spilled_rows
    for name in held:
        np.testing.assert_array_equal(held[name], spilled[name])

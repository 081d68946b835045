"""The transformer bench's pooled cosine and retrieval agreement."""
import numpy as np

from evonnx.tools.bench.embedding import fidelity, neighbours, pooled


def test_pooling_averages_the_real_tokens_only():
    out = np.zeros((2, 3, 2), np.float32)
    out[:, :2] = 1.0
    out[:, 2] = 100.0  # at a pad in the first sample
    tokens = np.array([[True, True, False], [True, True, True]])
    assert np.allclose(pooled(out, tokens), [[1, 1], [34, 34]])
    assert pooled(out, None).shape == (2, 6)


def test_retrieval_agreement_counts_the_teachers_neighbours_kept():
    rng = np.random.default_rng(0)
    teacher = rng.normal(size=(40, 8))
    assert fidelity(teacher, teacher)["same"] == 1.0
    scaled = fidelity(teacher, 3.0 * teacher)  # a scale changes no cosine and no neighbour
    assert scaled["overlap"] == 1.0 and abs(scaled["cosine"] - 1.0) < 1e-12
    shuffled = fidelity(teacher, teacher[rng.permutation(40)])
    assert shuffled["overlap"] < 0.5 and shuffled["cosine"] < 0.5
    assert not (neighbours(teacher) == np.arange(40)[:, None]).any()  # never its own neighbour


def test_unseen_inputs_leave_out_what_the_calibration_set_holds(tmp_path):
    from types import SimpleNamespace

    from evonnx.tools.bench.embedding import unseen_inputs
    ids = np.arange(12, dtype=np.int64).reshape(6, 2)
    np.savez(tmp_path / "calib.npz", ids=ids[:3], mask=np.ones((3, 2), np.float32))
    drawn = np.concatenate([ids[1:2], ids[3:], ids[2:3]])  # two of the calibration rows drawn again
    np.savez(tmp_path / "unseen.npz", ids=drawn, mask=np.ones((5, 2), np.float32))
    entry = SimpleNamespace(name="m", calib_path=lambda n=None, seed=0: tmp_path / ("calib.npz" if seed == 0 else
                                                                                     "unseen.npz"))
    kept = np.load(unseen_inputs(entry, SimpleNamespace(calib=None, unseen=5), tmp_path))
    assert np.array_equal(kept["ids"], ids[3:]) and kept["mask"].shape == (3, 2)

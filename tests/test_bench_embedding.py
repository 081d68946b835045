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

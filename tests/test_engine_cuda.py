"""The CUDA path of the engine; runs only where CUDA is usable (skipped on CPU-only machines)."""
import numpy as np
import onnxruntime as ort
import pytest

import corpus
from evonnx.passes.engine import providers
from evonnx.passes.engine.calib import synthetic
from evonnx.passes.engine.fitness import FitnessEngine
from evonnx.passes.state import load_state

pytestmark = pytest.mark.skipif(not providers.cuda_usable(), reason="CUDA is not usable here")


def test_cuda_engine_matches_cpu_fresh_model():
    state = load_state(corpus.conv_net().SerializeToString())
    calib = synthetic(state.model, 64, seed=3)
    engine = FitnessEngine(state.model, calib, state.targets, device="cuda", batch_size=16, held=state.held)
    assert engine.provider == "CUDAExecutionProvider"
    candidate = {"k": np.zeros((4, 1, 3, 3), np.float32), "w": state.original("w") * 0.5}
    got = engine.outputs(candidate)[0]
    session = ort.InferenceSession(state.replace(weights=candidate).to_onnx().SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(got, session.run(None, calib.inputs)[0], rtol=1e-4, atol=1e-5)
    assert engine.fitness([{}])[0] == pytest.approx(0, abs=1e-6)

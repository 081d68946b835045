"""Scale that fits CI: a 5M-parameter CNN of the scale bench's ladder through the budget-driven default within a
time limit (time and memory are measured by `python -m evonnx.tools.bench.scale`, not asserted here)."""
import numpy as np
import onnxruntime as ort

import evonnx
from evonnx.tools.bench.scale import CNN, cnn


def test_a_5m_parameter_cnn_goes_through_the_default_within_budget(tmp_path):
    model = cnn(*CNN[5])
    assert 4.5e6 < sum(np.prod(t.dims) for t in model.graph.initializer) < 5e6
    path = tmp_path / "cnn-5M.onnx"
    path.write_bytes(model.SerializeToString())
    x = np.random.default_rng(1).standard_normal((24, 3, 32, 32)).astype(np.float32)
    out = tmp_path / "cnn-5M.evx"
    result = evonnx.compress(path, out, calib={"input": x}, metric="cosine", max_drop=1.0, time_limit=40,
                             progress=False, device="cpu")
    assert result.ratio > 3.5  # at least every weight at 8 bits, entropy-coded
    assert result.held_out["upper"] <= 1.0  # the budget holds on the held-out share
    decoded = evonnx.decode(out)
    session = ort.InferenceSession(decoded.SerializeToString(), providers=["CPUExecutionProvider"])
    teacher = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    a, b = teacher.run(None, {"input": x[:8]})[0], session.run(None, {"input": x[:8]})[0]
    cos = np.sum(a * b, 1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    assert cos.min() > 0.97

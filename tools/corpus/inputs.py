"""Real calibration data for the corpus, built deterministically from files that ship in packages.

Photos and scanned text come from scikit-image's wheel (`skimage/data`), speech from espeak-ng (a Debian
package) reading real sentences, text from the licence texts every Debian system carries (and, for training
sets disjoint from those, the docstrings of Python's standard library), files for byte models from the cached
wheels themselves. A seed fixes every crop, flip and choice.
"""
from __future__ import annotations

import ast
import functools
import re
import subprocess
import sysconfig
import tempfile
import wave
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from evonnx.errors import EvonnxError
from evonnx.tools.corpus.fetch import Package, cache_dir

SKIMAGE = Package("scikit-image", "0.26.0",
                  "scikit_image-0.26.0-cp311-cp311-manylinux_2_24_x86_64.manylinux_2_28_x86_64.whl",
                  "74aa5518ccea28121f57a95374581d3b979839adc25bb03f289b1bc9b99c58af")
PHOTOS = ("astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_left.png", "motorcycle_right.png",
          "hubble_deep_field.jpg", "retina.jpg", "ihc.png", "camera.png", "coins.png", "moon.png")
TEXT_SCANS = ("page.png", "text.png")
TEXT_FILES = ("/usr/share/common-licenses/GPL-3", "/usr/share/common-licenses/Apache-2.0",
              "/usr/share/common-licenses/MPL-2.0")
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _image(name: str) -> Image.Image:
    return Image.open(SKIMAGE.member(f"skimage/data/{name}")).convert("RGB")


def photos(n: int, size: tuple[int, int], seed: int = 0, names: tuple[str, ...] = PHOTOS) -> np.ndarray:
    """n RGB uint8 images [n, H, W, 3]: random crops (40-100 % of the short side), flips, resized."""
    rng = np.random.default_rng(seed)
    sources = [_image(name) for name in names]
    out = np.empty((n, size[0], size[1], 3), np.uint8)
    for i in range(n):
        img = sources[i % len(sources)]
        w, h = img.size
        side = int(min(w, h) * rng.uniform(0.4, 1.0))
        aspect = size[1] / size[0]
        cw, ch = min(w, int(side * max(aspect, 1))), min(h, int(side / min(aspect, 1)))
        x0, y0 = rng.integers(0, w - cw + 1), rng.integers(0, h - ch + 1)
        crop = img.crop((x0, y0, x0 + cw, y0 + ch)).resize((size[1], size[0]), Image.BILINEAR)
        if rng.random() < 0.5:
            crop = crop.transpose(Image.FLIP_LEFT_RIGHT)
        out[i] = np.asarray(crop)
    return out


def text_lines(n: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    """n RGB uint8 line images [n, height, width, 3] cut from scanned text (page.png, text.png): lines found by
    row projection, cut at a random start, scaled to `height`, padded with white to `width`."""
    rng = np.random.default_rng(seed)
    lines = [line for name in TEXT_SCANS for line in _lines(_image(name))]
    out = np.full((n, height, width, 3), 255, np.uint8)
    for i in range(n):
        line = lines[i % len(lines)]
        w, h = line.size
        scaled_w = max(1, int(w * height / h))
        start = int(rng.integers(0, max(1, scaled_w - width // 2)))
        img = np.asarray(line.resize((scaled_w, height), Image.BILINEAR))[:, start:start + width]
        out[i, :, :img.shape[1]] = img
    return out


def _lines(page: Image.Image, min_height: int = 8) -> list[Image.Image]:
    gray = np.asarray(page.convert("L"), np.float32)
    ink = (gray < gray.mean() - 2 * gray.std()).mean(axis=1) > 0.005
    edges = np.flatnonzero(np.diff(np.r_[0, ink.astype(np.int8), 0]))
    out = []
    for top, bottom in zip(edges[::2], edges[1::2]):
        if bottom - top >= min_height:
            pad = (bottom - top) // 4
            out.append(page.crop((0, max(0, top - pad), page.size[0], min(page.size[1], bottom + pad))))
    return out


def text_pages(n: int, size: tuple[int, int], seed: int = 0) -> np.ndarray:
    """n RGB uint8 crops [n, H, W, 3] of scanned text pages at 60-100 % scale, for text detectors."""
    return photos(n, size, seed, TEXT_SCANS)


def captchas(n: int, height: int, width: int, seed: int = 0, alphabet: str = "abcdefghjkmnpqrstuvwxyz23456789"
             ) -> tuple[np.ndarray, list[str]]:
    """n captcha-style RGB uint8 images [n, height, width, 3] of 4-6 random characters (Pillow's own font,
    jittered and rotated, with noise lines and dots), and their strings."""
    rng = np.random.default_rng(seed)
    out, strings = np.empty((n, height, width, 3), np.uint8), []
    for i in range(n):
        text = "".join(rng.choice(list(alphabet), int(rng.integers(4, 7))))
        img = Image.new("RGB", (width, height), tuple(int(v) for v in rng.integers(200, 256, 3)))
        draw = ImageDraw.Draw(img)
        x = int(rng.integers(2, 10))
        for ch in text:
            font = ImageFont.load_default(size=int(height * rng.uniform(0.55, 0.75)))
            glyph = Image.new("L", (height, height), 0)
            ImageDraw.Draw(glyph).text((height // 6, height // 10), ch, font=font, fill=255)
            glyph = glyph.rotate(float(rng.uniform(-25, 25)), resample=Image.BILINEAR)
            color = tuple(int(v) for v in rng.integers(0, 120, 3))
            img.paste(Image.new("RGB", glyph.size, color), (x, int(rng.integers(-4, 5))), glyph)
            x += int(height * rng.uniform(0.35, 0.55))
        for _ in range(int(rng.integers(2, 5))):
            pts = [tuple(int(v) for v in rng.integers(0, (width, height))) for _ in range(2)]
            draw.line(pts, fill=tuple(int(v) for v in rng.integers(0, 160, 3)), width=int(rng.integers(1, 3)))
        out[i] = np.asarray(img)
        strings.append(text)
    return out, strings


def normalize(images: np.ndarray, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), scale: float = 1 / 255,
              bgr: bool = False, gray: bool = False, layout: str = "nchw") -> np.ndarray:
    """uint8 [n, H, W, 3] images -> float32 model input ((x * scale - mean) / std, channel order and layout)."""
    x = images.astype(np.float32)
    if gray:
        x = x @ np.array([0.299, 0.587, 0.114], np.float32)
        x = x[..., None]
    elif bgr:
        x = x[..., ::-1]
    x = (x * np.float32(scale) - np.asarray(mean, np.float32)[: x.shape[-1]]) / np.asarray(std, np.float32)[: x.shape[-1]]
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2) if layout == "nchw" else x, dtype=np.float32)


def sentences(n: int, seed: int = 0, min_words: int = 5, source: str = "licences") -> list[str]:
    """n English sentences: from the licence texts Debian ships (/usr/share/common-licenses), or with `source`
    "docstrings" from the docstrings of Python's standard library (a pool of thousands, for training sets that
    share no sentence with the licence texts)."""
    pool = _licence_sentences(min_words) if source == "licences" else _docstring_sentences(min_words)
    idx = np.random.default_rng(seed).choice(len(pool), n, replace=n > len(pool))
    return [pool[i] for i in idx]


def _licence_sentences(min_words: int) -> list[str]:
    text = " ".join(Path(p).read_text(errors="ignore") for p in TEXT_FILES if Path(p).is_file())
    if not text:
        raise EvonnxError("no licence texts under /usr/share/common-licenses to draw sentences from")
    parts = [" ".join(s.split()) for s in text.replace("\n\n", ". ").split(". ")]
    return [s for s in parts if len(s.split()) >= min_words and s[:1].isalpha()]


@functools.cache
def _docstring_sentences(min_words: int) -> list[str]:
    """Prose sentences of the standard library's docstrings (its tests and examples left out), in file order."""
    root = Path(sysconfig.get_paths()["stdlib"])
    skip = {"test", "tests", "idlelib", "site-packages", "dist-packages", "lib2to3"}
    out, seen = [], set()
    for path in sorted(root.rglob("*.py")):
        if skip & set(path.relative_to(root).parts):
            continue
        try:
            tree = ast.parse(path.read_text(errors="ignore"))
        except (SyntaxError, ValueError):
            continue
        for node in ast.walk(tree):
            if not isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for para in (ast.get_docstring(node) or "").split("\n\n"):
                if ">>>" in para or para.lstrip().startswith(("-", "*", ":")):
                    continue
                for s in re.split(r"(?<=[.!?])\s+", " ".join(para.split())):
                    if (len(s.split()) >= min_words and s[:1].isupper() and not re.search(r"[{}\[\]=<>|\\]", s)
                            and s not in seen):
                        seen.add(s)
                        out.append(s)
    if not out:
        raise EvonnxError(f"no docstrings under {root} to draw sentences from")
    return out


def speech(sentences_: list[str], rate: int = 16000) -> list[np.ndarray]:
    """Each sentence read by espeak-ng (Debian package `espeak-ng`), as float32 audio in [-1, 1] at `rate`."""
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, sentence in enumerate(sentences_):
            path = Path(tmp) / f"{i}.wav"
            voice = ("en", "en-us", "en+f3", "en+m3")[i % 4]
            try:
                subprocess.run(["espeak-ng", "-v", voice, "-s", str(140 + 10 * (i % 5)), "-w", str(path), sentence],
                               check=True, capture_output=True)
            except (OSError, subprocess.CalledProcessError) as exc:
                raise EvonnxError(f"espeak-ng cannot synthesize calibration speech ({exc}); "
                                  "install the Debian package espeak-ng") from None
            out.append(_read_wav(path, rate))
    return out


def _read_wav(path: Path, rate: int) -> np.ndarray:
    with wave.open(str(path)) as w:
        audio = np.frombuffer(w.readframes(w.getnframes()), np.int16).astype(np.float32) / 32768
        src = w.getframerate()
    if src != rate:  # linear resampling is enough for calibration audio
        t = np.arange(int(len(audio) * rate / src)) * (src / rate)
        audio = np.interp(t, np.arange(len(audio)), audio).astype(np.float32)
    return audio


def file_heads_tails(n: int, packages: list[Package], size: int = 1024, pad: int = 256, seed: int = 0) -> np.ndarray:
    """[n, 2 * size] int32: the first and last `size` bytes of n real files taken from package archives,
    padded with `pad` (the layout of byte-level file-type models)."""
    import zipfile

    blobs = []
    for package in packages:
        with zipfile.ZipFile(package.path()) as archive:
            names = sorted(i.filename for i in archive.infolist() if i.file_size > 0)
            for name in names:
                with archive.open(name) as f:
                    blobs.append(f.read())
    idx = np.random.default_rng(seed).choice(len(blobs), n, replace=n > len(blobs))
    out = np.full((n, 2 * size), pad, np.int32)
    for row, i in enumerate(idx):
        data = np.frombuffer(blobs[i].strip(), np.uint8)
        head, tail = data[:size], data[-size:] if len(data) > size else data[:0]
        out[row, :len(head)] = head
        out[row, 2 * size - len(tail):] = tail
    return out


def cache_file(name: str) -> Path:
    """A path in the corpus cache for derived files (calibration sets)."""
    path = cache_dir() / "calib" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


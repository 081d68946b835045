"""`evonnx calib audio`: sound files (WAV, FLAC and what else libsndfile reads, through soundfile), mixed
down to mono, resampled to --rate where the file's rate differs, and cut or zero-padded to a fixed length
(--seconds, else the model's fixed sample count).

Resampling is polyphase, in numpy only: for rates up/down = dst/src in lowest terms, output sample n takes
the input around n * down / up through one of `up` precomputed windowed-sinc filters (Kaiser window, beta
8.6, 16 zero crossings, cut off at the lower Nyquist rate so downsampling does not alias).

Besides the audio, the model may take a sample rate (an integer named sr, sample_rate or sampling_rate: set
to --rate) and a recurrent state (a float input whose name holds `state`, or h0/c0: zeros, a fresh state).
"""
from __future__ import annotations

import re
from math import gcd
from pathlib import Path

import numpy as np
import onnx

from evonnx.errors import CalibrationError
from evonnx.passes.engine import calib
from evonnx.tools.calib import (Built, InputSpec, cannot_fill, choose, describe, fixed, list_files, model_inputs,
                                pick_input)

RATE_NAMES = ("sr", "rate", "sample_rate", "sampling_rate")
STATE = re.compile(r"state|^[hc]0?$|^(hidden|cell)(_in)?$", re.IGNORECASE)
CROPS = ("start", "center", "random")
ZEROS, BETA, CHUNK = 16, 8.6, 1 << 15
EXTENSIONS = {".wav", ".wave", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aif", ".aiff", ".aifc", ".au", ".caf",
              ".w64", ".rf64"}


def _key(name: str) -> str:
    return name.lower().rsplit(":", 1)[0].rsplit("/", 1)[-1]


def is_audio(spec: InputSpec) -> bool:
    """[batch, samples] or [batch, 1, samples] floats, recurrent states aside."""
    return (np.issubdtype(spec.dtype, np.floating) and not STATE.search(_key(spec.name))
            and (len(spec.shape) == 2 or len(spec.shape) == 3 and fixed(spec.shape[1]) == 1))


def resample(x: np.ndarray, src: int, dst: int) -> np.ndarray:
    """Polyphase windowed-sinc resampling of a 1-D signal from `src` Hz to `dst` Hz."""
    if src == dst:
        return x
    g = gcd(src, dst)
    up, down = dst // g, src // g
    cutoff = min(1.0, up / down)  # of the input's Nyquist rate
    half = int(np.ceil(ZEROS / cutoff))  # filter half-width in input samples
    taps = np.arange(-half + 1, half + 1)
    tau = np.arange(up)[:, None] / up - taps[None, :]  # [phase, tap]: output time minus input sample time
    window = np.i0(BETA * np.sqrt(np.clip(1 - (tau * cutoff / ZEROS) ** 2, 0, None))) / np.i0(BETA)
    table = (cutoff * np.sinc(cutoff * tau) * window).astype(np.float32)
    padded = np.concatenate([np.zeros(half, np.float32), x.astype(np.float32), np.zeros(half + 1, np.float32)])
    n_out = int(np.ceil(len(x) * up / down))
    out = np.empty(n_out, np.float32)
    for start in range(0, n_out, CHUNK):
        n = np.arange(start, min(n_out, start + CHUNK))
        base, phase = (n * down) // up, (n * down) % up
        out[n] = np.einsum("ij,ij->i", padded[base[:, None] + taps[None, :] + half], table[phase])
    return out


def read(path: Path, rate: int) -> np.ndarray:
    """Mono float32 at `rate`."""
    import soundfile

    try:
        audio, src = soundfile.read(str(path), dtype="float32", always_2d=True)
    except Exception as exc:  # noqa: BLE001 - libsndfile errors, truncated headers
        raise CalibrationError(f"{path}: not a readable sound file ({str(exc).splitlines()[0][:160]})") from None
    if audio.shape[0] == 0:
        raise CalibrationError(f"{path}: no audio in it (0 frames)")
    return resample(audio.mean(axis=1), int(src), rate)


def fit(audio: np.ndarray, length: int, crop: str, rng: np.random.Generator) -> np.ndarray:
    if len(audio) < length:
        return np.pad(audio, (0, length - len(audio)))
    extra = len(audio) - length
    start = {"start": 0, "center": extra // 2, "random": int(rng.integers(0, extra + 1))}[crop]
    return audio[start:start + length]


def extras(specs: dict[str, InputSpec], audio: InputSpec, model: onnx.ModelProto, rate: int, n: int
           ) -> tuple[dict[str, np.ndarray], list[str]]:
    """The sample rate and zeroed recurrent states the model takes beside the audio."""
    axes = calib.input_axes(model)
    arrays, notes = {}, []
    for spec in specs.values():
        if spec.name == audio.name:
            continue
        key = _key(spec.name)
        if key in RATE_NAMES and np.issubdtype(spec.dtype, np.integer) and spec.shape in ([], [1]):
            arrays[spec.name] = np.full(spec.shape, rate, spec.dtype)
            notes.append(f"{spec.name}: {rate} (the sample rate)")
        elif STATE.search(key) and np.issubdtype(spec.dtype, np.floating):
            axis = axes[spec.name]
            shape = [n if i == axis else fixed(d) for i, d in enumerate(spec.shape)]
            if None in shape:
                raise CalibrationError(f"model input {describe(spec)}: a state with dynamic dims besides the "
                                       "batch cannot be zero-filled")
            arrays[spec.name] = np.zeros(shape, spec.dtype)
            notes.append(f"{spec.name}: zeros (a fresh recurrent state)")
        else:
            raise cannot_fill(spec, "audio")
    return arrays, notes


def build(directory: str | Path, model: onnx.ModelProto, rate: int, seconds: float | None = None,
          crop: str = "start", limit: int | None = None, seed: int = 0, input_name: str | None = None) -> Built:
    import soundfile  # noqa: F401 - a missing reader is reported before any file is looked at

    if rate < 1:
        raise CalibrationError(f"--rate {rate}: must be a positive number of samples a second")
    specs = model_inputs(model)
    spec = pick_input(specs, is_audio, "audio ([batch, samples] floats)", input_name)
    if not (np.issubdtype(spec.dtype, np.floating) and len(spec.shape) in (2, 3)):
        raise CalibrationError(f"--input {spec.name}: {describe(spec)} is not an audio input")
    model_length = fixed(spec.shape[-1])
    length = None if seconds is None else int(round(seconds * rate))
    if length is not None and length < 1:
        raise CalibrationError(f"--seconds {seconds}: less than one sample at {rate} Hz")
    if model_length is not None and length is not None and length != model_length:
        raise CalibrationError(f"--seconds {seconds}: {length} samples at {rate} Hz, model input {spec.name!r} "
                               f"takes exactly {model_length}")
    length = length or model_length
    if length is None:
        raise CalibrationError(f"model input {describe(spec)}: its length is not fixed; give --seconds")

    files = list_files(directory, EXTENSIONS, "sound", f" ({' '.join(sorted(EXTENSIONS))})")
    keep = choose(len(files), limit, seed)
    rng = np.random.default_rng(seed)
    clips = np.stack([fit(read(files[i], rate), length, crop, rng) for i in keep])
    arrays = {spec.name: np.ascontiguousarray(clips.reshape([len(keep)] + [1] * (len(spec.shape) - 2) + [length]),
                                              dtype=spec.dtype)}
    more, notes = extras(specs, spec, model, rate, len(keep))
    cut = {"start": "from the start", "center": "around the middle", "random": "at random offsets"}[crop]
    notes = [f"{len(keep)} clips, mono at {rate} Hz, {length} samples ({length / rate:g} s; longer files cut {cut})",
             *notes]
    return Built({**arrays, **more}, len(keep), None, notes)

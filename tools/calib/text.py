"""`evonnx calib text`: sentences (one a line) through a `tokenizers` tokenizer.json, mapped onto the model's
token inputs by name and dtype: ids, attention mask (integer 1/0, float 1/0, or an additive float mask with 0
at tokens and a large negative at pads, shaped [batch, 1, ..., tokens] by the input's rank), token types
and positions. Sequences are padded on the right to the model's fixed token length, else to --max-length,
else to the longest sentence, and truncated to that length."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx

from evonnx.errors import CalibrationError
from evonnx.tools.calib import Built, InputSpec, choose, describe, fixed, model_inputs

ROLES = {
    "ids": ("input_ids", "ids", "tokens", "token_ids", "input_tokens"),
    "mask": ("attention_mask", "mask", "input_mask", "attn_mask"),
    "types": ("token_type_ids", "segment_ids", "type_ids", "token_types"),
    "positions": ("position_ids", "positions"),
}
MASK_MODES = ("auto", "binary", "additive")
ADDITIVE_PAD = -10000.0  # BERT's own value: far below any attention score, and within float16


def read_lines(path: str | Path, what: str) -> list[str]:
    """The file's non-blank lines, stripped."""
    path = Path(path)
    if not path.is_file():
        raise CalibrationError(f"{path}: no such {what} file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise CalibrationError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        raise CalibrationError(f"{path}: no {what} lines in it")
    return lines


def read_labels(path: str | Path, count: int) -> np.ndarray:
    """One integer a non-blank line, as many as sentences."""
    lines = read_lines(path, "labels")
    try:
        labels = np.array([int(line) for line in lines], np.int64)
    except ValueError:
        bad = next(line for line in lines if not line.lstrip("+-").isdigit())
        raise CalibrationError(f"{path}: {bad!r} is not an integer label") from None
    if len(labels) != count:
        raise CalibrationError(f"{path}: {len(labels)} labels for {count} sentences (one a non-blank line each)")
    return labels


def role(spec: InputSpec) -> str | None:
    key = spec.name.lower().rsplit(":", 1)[0].rsplit("/", 1)[-1]  # tf2onnx's `name:0`, scoped names
    return next((r for r, names in ROLES.items() if key in names), None)


def map_inputs(specs: dict[str, InputSpec], ids_name: str | None) -> dict[str, str]:
    """Model input name -> role; every input must have one."""
    if ids_name is not None and ids_name not in specs:
        raise CalibrationError(f"--input {ids_name}: not a model input (inputs: {', '.join(specs)})")
    roles = {name: "ids" if name == ids_name else role(spec) for name, spec in specs.items()}
    if ids_name is not None:
        roles = {n: r if n == ids_name or r != "ids" else None for n, r in roles.items()}
    loose = [s for n, s in specs.items()
             if roles[n] is None and np.issubdtype(s.dtype, np.integer) and len(s.shape) == 2]
    if "ids" not in roles.values() and len(loose) == 1:  # the only [batch, tokens] integer input: the ids
        roles[loose[0].name] = "ids"
    for name, spec in specs.items():
        r = roles[name]
        if r is None:
            raise CalibrationError(f"model input {describe(spec)}: not a token input (input_ids, attention_mask, "
                                   "token_type_ids, position_ids or their aliases); name the ids input with "
                                   "--input NAME")
        if r != "mask" and not np.issubdtype(spec.dtype, np.integer):
            raise CalibrationError(f"model input {describe(spec)}: {r} must be integers")
        if np.issubdtype(spec.dtype, np.integer) and len(spec.shape) != 2 or len(spec.shape) < 2:
            raise CalibrationError(f"model input {describe(spec)}: expected [batch, tokens]"
                                   + (" (a float mask may be [batch, 1, ..., tokens])" if r == "mask" else ""))
    if "ids" not in roles.values():
        raise CalibrationError(f"the model has no token ids input (inputs: {', '.join(map(describe, specs.values()))})")
    return roles


def token_length(specs: dict[str, InputSpec], max_length: int | None) -> int | None:
    """The model's fixed token length (checked against --max-length), else --max-length."""
    lengths = {s.name: fixed(s.shape[-1]) for s in specs.values() if fixed(s.shape[-1])}
    if len(set(lengths.values())) > 1:
        raise CalibrationError("the model's token inputs fix different lengths: "
                               + ", ".join(f"{n} {v}" for n, v in lengths.items()))
    if lengths:
        name, length = next(iter(lengths.items()))
        if max_length is not None and max_length != length:
            raise CalibrationError(f"--max-length {max_length}: model input {name!r} takes exactly {length} tokens")
        return length
    if max_length is not None and max_length < 2:
        raise CalibrationError(f"--max-length {max_length}: must be at least 2")
    return max_length


def additive(model: onnx.ModelProto, spec: InputSpec, mode: str) -> bool:
    """A float mask is additive when the model adds it to scores directly, or when it is shaped
    [batch, 1, ..., tokens] to broadcast over them; a float [batch, tokens] mask elsewhere is 1/0."""
    if mode != "auto" or not np.issubdtype(spec.dtype, np.floating):
        return mode == "additive"
    return len(spec.shape) > 2 or any(n.op_type == "Add" and spec.name in n.input for n in model.graph.node)


def load_tokenizer(path: str | Path):
    from tokenizers import Tokenizer

    path = Path(path)
    if not path.is_file():
        raise CalibrationError(f"{path}: no such tokenizer file")
    try:
        return Tokenizer.from_file(str(path))
    except Exception as exc:  # noqa: BLE001 - the Rust side raises plain Exception
        why = str(exc).splitlines()[0][:120] if str(exc) else exc.__class__.__name__
        raise CalibrationError(f"{path}: not a `tokenizers` tokenizer.json ({why})") from None


def pad_id(tok) -> int:
    if tok.padding:
        return int(tok.padding["pad_id"])
    return next((i for t in ("[PAD]", "<pad>", "<|pad|>", "<PAD>") if (i := tok.token_to_id(t)) is not None), 0)


def build(text_file: str | Path, tokenizer: str | Path, model: onnx.ModelProto, max_length: int | None = None,
          labels_file: str | Path | None = None, limit: int | None = None, seed: int = 0,
          ids_input: str | None = None, mask: str = "auto", mask_value: float = ADDITIVE_PAD) -> Built:
    sentences = read_lines(text_file, "text")
    labels = None if labels_file is None else read_labels(labels_file, len(sentences))
    specs = model_inputs(model)
    roles = map_inputs(specs, ids_input)
    length = token_length({n: specs[n] for n in roles}, max_length)
    tok = load_tokenizer(tokenizer)
    keep = choose(len(sentences), limit, seed)
    sentences = [sentences[i] for i in keep]
    labels = None if labels is None else labels[keep]

    pad = pad_id(tok)
    tok.no_padding()  # padded here, to the length this model takes
    if length is not None:
        tok.enable_truncation(length)
    encodings = tok.encode_batch(sentences)
    length = length or max(len(e.ids) for e in encodings)
    n = len(encodings)
    ids = np.full((n, length), pad, np.int64)
    valid = np.zeros((n, length), np.int64)
    types = np.zeros((n, length), np.int64)
    for i, e in enumerate(encodings):
        k = min(len(e.ids), length)
        ids[i, :k], valid[i, :k], types[i, :k] = e.ids[:k], 1, e.type_ids[:k]
    truncated = sum(len(e.ids) > length or len(e.overflowing) > 0 for e in encodings)

    arrays, notes = {}, [f"{n} sentences, {length} tokens each ({truncated} truncated)"]
    for name, r in roles.items():
        spec = specs[name]
        if r == "ids":
            value = ids
        elif r == "types":
            value = types
        elif r == "positions":
            value = np.broadcast_to(np.arange(length), (n, length))
        elif additive(model, spec, mask):
            value = np.where(valid == 1, 0.0, mask_value).reshape([n] + [1] * (len(spec.shape) - 2) + [length])
            notes.append(f"{name}: additive mask, 0 at tokens and {mask_value:g} at pads")
        else:
            value = valid.reshape([n] + [1] * (len(spec.shape) - 2) + [length])
        arrays[name] = np.ascontiguousarray(value, dtype=spec.dtype)
    return Built(arrays, n, labels, notes)

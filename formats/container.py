"""The .evx file: header, section table, sections back to back (1.x: aligned), trailer; CRC-32 everywhere.

Layout and rules are in SPEC.md. `encode_evx` / `write_evx` build a file from the ONNX graph (with
the recorded weights taken out of graph.initializer), the QuantizedTensor records and a JSON-able
`meta`; `read_evx` checks and decodes one, raising EvxFormatError that names what is wrong.
"""
from __future__ import annotations

import json
import os
import struct
import zlib
from dataclasses import dataclass, field
from functools import cached_property

import onnx

from evonnx.errors import EvxFormatError
from evonnx.formats import record
from evonnx.formats.atomic import atomic_write_bytes
from evonnx.formats.bytesio import Reader
from evonnx.formats.stats import ContainerStats, container_stats, tensor_stats
from evonnx.formats.symbols import zstd_compress, zstd_decompress
from evonnx.formats.tensor import QuantizedTensor

MAGIC = b"\x89EVX\r\n\x1a\n"
END_MAGIC = b"EVXEND\x00\x00"
MAJOR, MINOR = 2, 2                      # the newest version; 2.1 added integer records, 2.2 coded parameters
ALIGN = {1: 64, 2: 1}                    # section alignment by major version (2.0 dropped the padding)
HEADER = struct.Struct("<8sHHIQII")      # magic, major, minor, section_count, file_size, flags, header_crc
SECTIONS = {1: struct.Struct("<4sIQQII"),  # kind, flags, offset, length, crc32, reserved
            2: struct.Struct("<4sIQI")}    # kind, flags, length, crc32 (offsets follow from the lengths)
SECTION = SECTIONS[MAJOR]
TRAILER = struct.Struct("<8sII")         # end magic, reserved, file_crc
REQUIRED = 1                             # section flag: a reader that does not know the kind must fail

KIND_MANIFEST, KIND_GRAPH, KIND_TENSOR, KIND_META = b"MANI", b"GRPH", b"TENS", b"META"
KIND_NAMES = {KIND_MANIFEST: "manifest", KIND_GRAPH: "graph", KIND_TENSOR: "tensor record", KIND_META: "meta"}

MAX_SECTIONS = 1 << 20
MAX_MANIFEST_BYTES = 64 << 20
MAX_GRAPH_BYTES = (1 << 31) - 1          # protobuf's own limit
MIN_OUTPUT_LIMIT = 256 << 20            # default decoded-size limit: max(256 MiB, 4096 x file size)
OUTPUT_LIMIT_RATIO = 4096
_RAW_SIZE = struct.Struct("<Q")          # prefix of a zstd-framed section: the uncompressed size


@dataclass
class Container:
    """A decoded .evx file; `stats` (sizes and entropy bounds) is computed on first use."""

    graph: onnx.ModelProto          # the model without the recorded weights
    tensors: list[QuantizedTensor]  # one per TENS section, in file order
    meta: dict                      # the writer's `meta`
    version: tuple[int, int]        # (major, minor) of the file
    container_bytes: int
    graph_bytes: int                # serialized graph
    graph_coded_bytes: int          # its section
    record_sizes: list[record.RecordSizes] = field(repr=False)

    @cached_property
    def stats(self) -> ContainerStats:
        per_tensor = [tensor_stats(t, z.total, z.mask, z.values, z.mask_codec, z.value_codec)
                      for t, z in zip(self.tensors, self.record_sizes)]
        return container_stats(f"{self.version[0]}.{self.version[1]}", self.container_bytes, self.graph_bytes,
                               self.graph_coded_bytes, per_tensor)


def _crc(data) -> int:
    return zlib.crc32(data) & 0xFFFFFFFF


def _pad(n: int, major: int = MAJOR) -> int:
    return -n % ALIGN[major]


def _check_graph(graph: onnx.ModelProto, names: set[str]) -> None:
    if not isinstance(graph, onnx.ModelProto):
        raise EvxFormatError(f"graph must be an onnx.ModelProto, got {type(graph).__name__}")
    for init in graph.graph.initializer:
        if init.name in names:
            raise EvxFormatError(f"tensor {init.name!r} is both a record and an initializer of the graph "
                                 "(remove it from graph.initializer)")
        if init.data_location == onnx.TensorProto.EXTERNAL:
            raise EvxFormatError(f"graph initializer {init.name!r} uses external data; load it into the model first")


def encode_evx(graph: onnx.ModelProto, tensors: list[QuantizedTensor], meta: dict | None = None) -> bytes:
    """The bytes of a .evx file (deterministic: the same inputs give the same bytes)."""
    names = [t.name for t in tensors]
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise EvxFormatError(f"duplicate tensor names: {dup[:5]}")
    for t in tensors:
        if not isinstance(t, QuantizedTensor):
            raise EvxFormatError(f"tensors must be QuantizedTensor records, got {type(t).__name__}")
    _check_graph(graph, set(names))
    if meta is not None and not isinstance(meta, dict):
        raise EvxFormatError(f"meta must be a dict, got {type(meta).__name__}")
    version = (MAJOR, _minor(tensors))
    manifest = {"format": "evx", "version": "{}.{}".format(*version), "producer": _producer(),
                "tensor_count": len(tensors)}
    manifest_bytes = _json(manifest, "manifest")
    graph_bytes = graph.SerializeToString()
    if len(graph_bytes) > MAX_GRAPH_BYTES:
        raise EvxFormatError("the graph without the recorded tensors exceeds 2 GiB")
    sections = [(KIND_MANIFEST, manifest_bytes, REQUIRED), (KIND_GRAPH, _framed(graph_bytes), REQUIRED)]
    if meta:  # optional, so a 1.0 reader skips it (and sees no meta)
        sections.append((KIND_META, _framed(_json(meta, "meta")), 0))
    sections += [(KIND_TENSOR, record.encode_record(t, MAJOR), REQUIRED) for t in tensors]
    return _assemble(sections, version)


def _minor(tensors: list[QuantizedTensor]) -> int:
    """The lowest minor version that describes the file: files a 2.0 reader decodes say 2.0."""
    return max((record.record_minor(t) for t in tensors), default=0)


def _json(obj: dict, what: str) -> bytes:
    try:
        out = json.dumps(obj, sort_keys=True, allow_nan=False, ensure_ascii=False).encode("utf-8")
    except (TypeError, ValueError) as exc:
        raise EvxFormatError(f"{what} is not JSON-serialisable ({exc})") from None
    if len(out) > MAX_MANIFEST_BYTES:
        raise EvxFormatError(f"{what} is {len(out)} bytes of JSON, over the {MAX_MANIFEST_BYTES} limit")
    return out


def _framed(raw: bytes) -> bytes:
    return _RAW_SIZE.pack(len(raw)) + zstd_compress(raw)


def _unframed(data, limit: int, what: str) -> bytes:
    r = Reader(data, what)
    size = r.u64(f"{what} size")
    if size > limit:
        raise EvxFormatError(f"{what} declares {size} bytes, over the {limit}-byte limit")
    return zstd_decompress(r.take(r.left, f"{what} frame"), size, what)


def _assemble(sections: list[tuple[bytes, bytes, int]], version: tuple[int, int] = (MAJOR, MINOR)) -> bytes:
    """The file from (kind, data, flags) sections, in order; `version` (tests) frames it as an older one."""
    major, minor = version
    entry = SECTIONS[major]
    table_end = HEADER.size + entry.size * len(sections)
    offset = table_end + _pad(table_end, major)
    entries, body = [], [b"\x00" * (offset - table_end)]
    for kind, data, flags in sections:
        entries.append(entry.pack(kind, flags, offset, len(data), _crc(data), 0) if major == 1 else
                       entry.pack(kind, flags, len(data), _crc(data)))
        body += [data, b"\x00" * _pad(len(data), major)]
        offset += len(data) + _pad(len(data), major)
    file_size = offset + TRAILER.size
    table = b"".join(entries)
    head = HEADER.pack(MAGIC, major, minor, len(sections), file_size, 0, 0)[:HEADER.size - 4]
    head += struct.pack("<I", _crc(head + table))
    out = bytearray(head + table + b"".join(body))
    out += TRAILER.pack(END_MAGIC, 0, 0)[:-4]
    out += struct.pack("<I", _crc(out))
    return bytes(out)


def write_evx(path: str | os.PathLike, graph: onnx.ModelProto, tensors: list[QuantizedTensor],
              meta: dict | None = None) -> int:
    """Encode and write atomically; returns the file size in bytes."""
    data = encode_evx(graph, tensors, meta)
    atomic_write_bytes(path, data)
    return len(data)


def _producer() -> str:
    from evonnx import __version__
    return f"evonnx {__version__}"


# -- reading --------------------------------------------------------------------------------------
def _load(source) -> bytes | memoryview:
    if isinstance(source, (bytes, bytearray, memoryview)):
        return memoryview(source).cast("B")
    if isinstance(source, (str, os.PathLike)):
        try:
            with open(source, "rb") as f:
                return f.read()
        except IsADirectoryError:
            raise EvxFormatError(f"{os.fspath(source)}: is a directory, not an .evx file") from None
        except FileNotFoundError:
            raise EvxFormatError(f"{os.fspath(source)}: no such file") from None
    raise EvxFormatError(f"expected a path or bytes, got {type(source).__name__}")


@dataclass
class _Section:
    index: int
    kind: bytes
    flags: int
    offset: int
    length: int
    crc: int

    @property
    def label(self) -> str:
        kind = KIND_NAMES.get(self.kind, repr(self.kind.decode("latin-1")))
        return f"section {self.index} ({kind})"


def _parse_frame(data) -> tuple[tuple[int, int], list[_Section]]:
    """Check header, section table, checksums and bounds; return the version and sections."""
    n = len(data)
    if n == 0:
        raise EvxFormatError("empty input (0 bytes): not an .evx container")
    if n < len(MAGIC) or bytes(data[:len(MAGIC)]) != MAGIC:
        raise EvxFormatError("not an .evx container (bad magic bytes)")
    if n >= 12:  # magic and version are the only fields every version keeps in place
        major, minor = struct.unpack_from("<HH", data, 8)
        if major > MAJOR:
            raise EvxFormatError(f".evx version {major}.{minor} is newer than this reader ({MAJOR}.{MINOR}); "
                                 "upgrade evonnx to decode it")
        if major < 1:
            raise EvxFormatError(f"invalid .evx major version {major}")
    if n < HEADER.size + TRAILER.size:
        raise EvxFormatError(f"truncated container: {n} bytes is shorter than any .evx file")
    _, major, minor, count, file_size, _flags, header_crc = HEADER.unpack_from(data, 0)
    if file_size != n:
        if file_size > n:
            raise EvxFormatError(f"truncated container: header says {file_size} bytes, got {n}")
        raise EvxFormatError(f"{n - file_size} unexpected bytes after the end of the container "
                             f"(header says {file_size} bytes)")
    entry = SECTIONS[major]
    table_end = HEADER.size + entry.size * count
    if count > MAX_SECTIONS or table_end + TRAILER.size > n:
        raise EvxFormatError(f"section count {count} does not fit in a {n}-byte file")
    head = bytes(data[:HEADER.size - 4]) + bytes(data[HEADER.size:table_end])
    if _crc(head) != header_crc:
        raise EvxFormatError("header checksum mismatch: the header or section table is corrupt")
    sections = []
    body_start = table_end + _pad(table_end, major)
    body_end = n - TRAILER.size
    prev_end = body_start
    for i in range(count):
        if major == 1:
            kind, flags, offset, length, crc, _ = entry.unpack_from(data, HEADER.size + entry.size * i)
        else:
            (kind, flags, length, crc), offset = entry.unpack_from(data, HEADER.size + entry.size * i), prev_end
        s = _Section(i, kind, flags, offset, length, crc)
        if offset % ALIGN[major] or offset < prev_end or offset + length > body_end:
            raise EvxFormatError(f"{s.label}: bad placement (offset {offset}, length {length})")
        prev_end = offset + length
        sections.append(s)
    if major > 1 and prev_end != body_end:
        raise EvxFormatError(f"{body_end - prev_end} bytes between the last section and the trailer")
    for s in sections:
        if _crc(data[s.offset:s.offset + s.length]) != s.crc:
            raise EvxFormatError(f"{s.label}: checksum mismatch (corrupt data)")
    end_magic, _, file_crc = TRAILER.unpack_from(data, body_end)
    if end_magic != END_MAGIC:
        raise EvxFormatError("bad trailer: the end of the file is corrupt or missing")
    if _crc(data[:n - 4]) != file_crc:
        raise EvxFormatError("file checksum mismatch: corrupt padding or trailer")
    return (major, minor), sections


def _read_json(data, what: str) -> dict:
    if len(data) > MAX_MANIFEST_BYTES:
        raise EvxFormatError(f"{what} of {len(data)} bytes exceeds the {MAX_MANIFEST_BYTES}-byte limit")
    try:
        obj = json.loads(bytes(data).decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise EvxFormatError(f"{what} is not valid UTF-8 JSON ({exc})") from None
    if not isinstance(obj, dict):
        raise EvxFormatError(f"{what} must be a JSON object")
    return obj


def _read_meta(manifest: dict, meta_sections: list[_Section], view) -> dict:
    """The writer's meta: the META section (since 1.1) or the manifest's `meta` key (1.0), never both."""
    if len(meta_sections) > 1:
        raise EvxFormatError(f"expected at most one meta section, found {len(meta_sections)}")
    if meta_sections:
        if "meta" in manifest:
            raise EvxFormatError("meta is given twice: in the manifest and in a meta section")
        return _read_json(_unframed(view(meta_sections[0]), MAX_MANIFEST_BYTES, "meta section"), "meta section")
    meta = manifest.get("meta", {})
    if not isinstance(meta, dict):
        raise EvxFormatError("the manifest's 'meta' must be a JSON object")
    return meta


def _read_graph(data) -> tuple[onnx.ModelProto, int]:
    raw = _unframed(data, MAX_GRAPH_BYTES, "graph section")
    size = len(raw)
    model = onnx.ModelProto()
    try:
        model.ParseFromString(raw)
    except Exception as exc:  # noqa: BLE001 - protobuf raises its own DecodeError types
        raise EvxFormatError(f"graph section is not an ONNX model ({exc.__class__.__name__})") from None
    return model, size


def default_output_limit(file_bytes: int) -> int:
    """Decoded bytes a file of this size may announce unless the caller allows more."""
    return max(MIN_OUTPUT_LIMIT, OUTPUT_LIMIT_RATIO * file_bytes)


def read_evx(source, *, max_output_bytes: int | None = None) -> Container:
    """Check and decode a .evx file (path, bytes or memoryview).

    Before decoding any tensor, refuses files whose tensors would take more than `max_output_bytes`
    once dense (default: `default_output_limit(file size)`, i.e. max(256 MiB, 4096 x the file),
    far above any real compression ratio). Every problem is an EvxFormatError naming what is wrong.
    """
    data = _load(source)
    if max_output_bytes is None:
        max_output_bytes = default_output_limit(len(data))
    version, sections = _parse_frame(data)
    by_kind: dict[bytes, list[_Section]] = {}
    for s in sections:
        if s.kind not in KIND_NAMES:
            if s.flags & REQUIRED:
                raise EvxFormatError(f"{s.label}: unknown required section; a newer evonnx wrote this file")
            continue  # unknown optional section: skipped
        by_kind.setdefault(s.kind, []).append(s)
    for kind in (KIND_MANIFEST, KIND_GRAPH):
        if len(by_kind.get(kind, [])) != 1:
            raise EvxFormatError(f"expected one {KIND_NAMES[kind]} section, found {len(by_kind.get(kind, []))}")
    view = lambda s: data[s.offset:s.offset + s.length]  # noqa: E731
    manifest = _read_json(view(by_kind[KIND_MANIFEST][0]), "manifest")
    meta = _read_meta(manifest, by_kind.get(KIND_META, []), view)
    tensor_sections = by_kind.get(KIND_TENSOR, [])
    if manifest.get("tensor_count") != len(tensor_sections):
        raise EvxFormatError(f"manifest lists {manifest.get('tensor_count')} tensors, file has "
                             f"{len(tensor_sections)} tensor records")
    headers = [record.read_header(view(s), s.label, version[0]) for s in tensor_sections]
    total = sum(h.nbytes for h in headers)
    if total > max_output_bytes:
        raise EvxFormatError(f"tensors would take {total} bytes once decoded, over the limit of "
                             f"{max_output_bytes} bytes (pass max_output_bytes to allow more)")
    names = [h.name for h in headers]
    if len(set(names)) != len(names):
        raise EvxFormatError("two tensor records share a name")
    graph, graph_size = _read_graph(view(by_kind[KIND_GRAPH][0]))
    _check_graph(graph, set(names))
    tensors, sizes_list = [], []
    for h, s in zip(headers, tensor_sections):
        where = f"{s.label} (tensor {h.name!r})"
        try:
            t, sizes = record.read_payload(h)
        except EvxFormatError as exc:
            msg = str(exc)
            raise EvxFormatError(msg if msg.startswith(where) else f"{where}: {msg}") from None
        except MemoryError:
            raise EvxFormatError(f"{where}: not enough memory to decode it") from None
        except (ValueError, IndexError, TypeError, OverflowError) as exc:  # safety net: never a crash
            raise EvxFormatError(f"{where}: malformed record ({exc})") from exc
        tensors.append(t)
        sizes_list.append(sizes)
    return Container(graph, tensors, meta, version, len(data), graph_size,
                     by_kind[KIND_GRAPH][0].length, sizes_list)

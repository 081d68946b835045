"""Older .evx files for compatibility tests: a current file's sections, framed and laid out as 1.x."""
from evonnx.formats import container as ct
from evonnx.formats import read_evx
from evonnx.formats.record import encode_record


def as_version(data: bytes, version: tuple[int, int]) -> bytes:
    """`data` re-framed as `version` (64-byte aligned 1.x table and sections), its records in that layout."""
    tensors = iter(read_evx(data).tensors)  # in file order
    sections = [(s.kind, encode_record(next(tensors), version[0]) if s.kind == ct.KIND_TENSOR
                 else bytes(data[s.offset:s.offset + s.length]), s.flags) for s in ct._parse_frame(data)[1]]
    return ct._assemble(sections, version)

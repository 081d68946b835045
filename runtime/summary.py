"""`evonnx.inspect`: what an .evx container holds and how well it is coded, as the JSON `inspect --json` prints.

Keys (stable; formats/SPEC.md, "inspect --json"): file, version, container_bytes, graph_bytes,
graph_coded_bytes, original_bytes, ratio, tensor_bytes, tensor_coded_bytes, payload_bits, entropy_bits,
bits_over_entropy, meta, tensors[] (name, shape, dtype, scheme, bits, elements, kept, sparsity, mask_codec,
value_codec, coded_bytes, payload_bits, entropy_bits, bits_over_entropy, original_bytes, zstd_bytes).
"""
from __future__ import annotations

import os

from evonnx.formats import read_evx


def inspect(path: str | os.PathLike) -> dict:
    """Per-tensor and total sizes of the container at `path`, with its metadata (passes and settings)."""
    c = read_evx(path)
    return {"file": str(path), **c.stats.to_json(), "meta": c.meta}

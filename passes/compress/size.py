"""`max_bytes`: a bound on the whole file, met by fitting the bit allocation's size target."""
from __future__ import annotations

import dataclasses
import logging

from evonnx.errors import EvonnxError
from evonnx.formats.container import encode_evx
from evonnx.passes.base import PassContext
from evonnx.passes.compress.container import to_container
from evonnx.passes.pipeline import Pipeline
from evonnx.passes.state import ModelState

log = logging.getLogger(__name__)


def max_bytes_of(value: int | str | None, original: int, sparsity, bits, pipeline) -> int:
    """`max_bytes` as a byte count (0: no size bound); "Rx" is the model file's size / R."""
    if value is None:
        return 0
    text = str(value).strip()
    try:
        out = int(original / float(text[:-1])) if text.lower().endswith("x") else int(text)
    except (ValueError, ZeroDivisionError):
        raise EvonnxError(f"--max-bytes must be a byte count or a ratio like 100x, not {value!r}") from None
    if out <= 0:
        raise EvonnxError(f"--max-bytes must be positive, not {value!r}")
    if sparsity == "auto" or (pipeline is None and bits != "auto"):
        raise EvonnxError("--max-bytes sizes the bit allocation: it needs --bits auto and a numeric --sparsity, "
                          "or a --config with one bit-allocation pass")
    return out


def fit_file_size(state: ModelState, ctx: PassContext, pipeline: Pipeline, max_bytes: int,
                  meta_of) -> tuple[ModelState, Pipeline]:
    """Run `pipeline` with its one bit-allocation fitted to `max_bytes`: its size target leaves room for the
    file's other bytes (graph, metadata, lossless integer records, section table), and it runs again with less
    when the encoded file is still too large. Passes after it must not change the size (a fine-tune on the grid)."""
    from evonnx.formats.container import SECTION
    from evonnx.passes.bit_allocation import BitAllocation

    at = [i for i, p in enumerate(pipeline.passes) if p.name == BitAllocation.name]
    if len(at) != 1:
        raise EvonnxError(f"--max-bytes needs exactly one bit-allocation pass in the pipeline, found {len(at)}")
    i = at[0]
    state = pipeline.run(state, ctx, stop=i)
    graph, records, _ = to_container(state)
    lossless = [r for r in records if r.name not in state.table.weights]
    framing = (len(records) - len(lossless)) * SECTION.size  # a table entry each
    overhead = len(encode_evx(graph, lossless, meta_of(pipeline))) + framing
    target = max_bytes - overhead
    for attempt in range(4):
        if target <= 0:
            raise EvonnxError(f"--max-bytes {max_bytes}: the graph, metadata and record framing alone take about "
                              f"{overhead} bytes")
        step = BitAllocation(**{**dataclasses.asdict(pipeline.passes[i].config), "target_bytes": target})
        fitted = Pipeline([*pipeline.passes[:i], step, *pipeline.passes[i + 1:]])
        out = fitted.run(state, ctx, start=i, stop=i + 1)
        size = len(encode_evx(*to_container(out)[:2], meta_of(fitted)))
        if size <= max_bytes:
            log.info(f"max bytes {max_bytes}: the file takes {size} (weights target {target})")
            break
        log.info(f"max bytes {max_bytes}: {size} bytes with a weights target of {target}; trying again with less")
        target -= max(size - max_bytes, target // 100) << attempt  # the allocation moves in steps
    else:
        raise EvonnxError(f"--max-bytes {max_bytes}: the bit allocation's size estimate stayed above the limit "
                          f"({size} bytes); allow a little more")
    out = fitted.run(out, ctx, start=i + 1)
    size = len(encode_evx(*to_container(out)[:2], meta_of(fitted)))
    if size > max_bytes:
        raise EvonnxError(f"--max-bytes {max_bytes}: the passes after the bit allocation grew the file to {size} "
                          "bytes")
    return out, fitted

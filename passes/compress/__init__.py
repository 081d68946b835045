"""Orchestration of a compress request: the budget, auto sparsity, size fitting, the work dir and
verification, around the passes. `compress` is the public API (also `evonnx.compress`)."""
from evonnx.passes.compress.default import default_pipeline
from evonnx.passes.compress.request import CompressRequest
from evonnx.passes.compress.result import CompressResult
from evonnx.passes.compress.run import compress

__all__ = ["compress", "CompressRequest", "CompressResult", "default_pipeline"]

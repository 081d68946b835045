"""The .evx container (SPEC.md): compressed-weight records, entropy coding, reading and writing.

Imports only numpy, onnx, zstandard, constriction and the standard library.
"""
from evonnx.formats.container import MAJOR, MINOR, Container, default_output_limit, encode_evx, read_evx, write_evx
from evonnx.formats.record import encode_record
from evonnx.formats.stats import ContainerStats, TensorStats, entropy_bits
from evonnx.formats.tensor import QuantizedTensor, dequantize, scale_shape

__all__ = ["QuantizedTensor", "dequantize", "scale_shape", "encode_evx", "write_evx", "read_evx", "Container",
           "ContainerStats", "TensorStats", "entropy_bits", "encode_record", "default_output_limit",
           "MAJOR", "MINOR"]

"""The weight dtypes a container can hold: numpy name <-> ONNX element type <-> bit-pattern dtype.

Float weights take any scheme; integer weights (int8, uint8: weights quantized before evonnx saw them,
since container 2.1) only the lossless raw one. bfloat16 comes from onnx's own numpy mapping
(ml_dtypes), so no extra import is needed here.
"""
from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper

from evonnx.errors import EvxFormatError

# numpy dtype name -> ONNX TensorProto.DataType (the code stored in a tensor record)
ELEM_TYPES: dict[str, int] = {
    "float32": TensorProto.FLOAT,     # 1
    "float16": TensorProto.FLOAT16,   # 10
    "float64": TensorProto.DOUBLE,    # 11
    "bfloat16": TensorProto.BFLOAT16,  # 16
    "int8": TensorProto.INT8,         # 3, since 2.1
    "uint8": TensorProto.UINT8,       # 2, since 2.1
}
INTEGER_DTYPES = ("int8", "uint8")  # raw (lossless) records only
DTYPE_NAMES: dict[int, str] = {v: k for k, v in ELEM_TYPES.items()}

# unsigned integer dtype holding one value's bit pattern, by itemsize
_PATTERN = {1: np.dtype("u1"), 2: np.dtype("<u2"), 4: np.dtype("<u4"), 8: np.dtype("<u8")}


def np_dtype(name: str) -> np.dtype:
    """The numpy dtype of a supported dtype name ('float32', 'float16', 'bfloat16', 'float64', 'int8', 'uint8')."""
    if name not in ELEM_TYPES:
        raise EvxFormatError(f"unsupported weight dtype {name!r} (supported: {', '.join(ELEM_TYPES)})")
    if name == "bfloat16":
        return np.dtype(helper.tensor_dtype_to_np_dtype(TensorProto.BFLOAT16))
    return np.dtype(name)


def dtype_name(dtype) -> str:
    """The supported dtype name of a numpy dtype, or EvxFormatError."""
    name = np.dtype(dtype).name
    np_dtype(name)
    return name


def pattern_dtype(name: str) -> np.dtype:
    """The little-endian unsigned dtype with the same itemsize as `name` (raw values are stored as these)."""
    return _PATTERN[np_dtype(name).itemsize]


def itemsize(name: str) -> int:
    return np_dtype(name).itemsize

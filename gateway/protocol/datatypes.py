"""The protocol's 14 tensor datatypes and their numpy equivalents.

BF16 has no numpy dtype of its own; ``ml_dtypes.bfloat16`` provides one that numpy
treats like any other 2-byte type. BYTES tensors are numpy object arrays of ``bytes``.
"""

from typing import Final

import ml_dtypes
import numpy as np

from gateway.protocol.errors import InvalidRequest

_NUMPY_BY_DATATYPE: Final[dict[str, np.dtype]] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "BYTES": np.dtype(np.object_),
}
_DATATYPE_BY_NUMPY: Final[dict[np.dtype, str]] = {v: k for k, v in _NUMPY_BY_DATATYPE.items()}

DATATYPES: Final[tuple[str, ...]] = tuple(_NUMPY_BY_DATATYPE)


def numpy_dtype(datatype: str) -> np.dtype:
    """The numpy dtype that holds ``datatype``'s elements."""
    try:
        return _NUMPY_BY_DATATYPE[datatype]
    except KeyError:
        raise InvalidRequest(
            f"unknown datatype '{datatype}'; expected one of {', '.join(DATATYPES)}"
        ) from None


def datatype_of(dtype: np.dtype) -> str:
    """The protocol datatype for a numpy dtype; strings of any kind map to BYTES."""
    if dtype.kind in "OSU":
        return "BYTES"
    try:
        return _DATATYPE_BY_NUMPY[dtype.newbyteorder("=")]
    except KeyError:
        raise InvalidRequest(f"numpy dtype {dtype} has no protocol datatype") from None


def element_size(datatype: str) -> int:
    """Bytes per element on the wire; 0 for BYTES, whose elements vary in length."""
    dtype = numpy_dtype(datatype)
    return 0 if dtype.kind == "O" else dtype.itemsize

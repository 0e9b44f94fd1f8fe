"""Raw tensor bytes <-> numpy arrays: the fast path of both transports.

Fixed-size datatypes are viewed with ``np.frombuffer`` (no copy, no per-element work).
BYTES elements are each a 4-byte little-endian length followed by the bytes; walking
them is inherently per element, so that walk is the one loop kept here.
"""

import struct
from math import prod

import numpy as np

from gateway.protocol.datatypes import numpy_dtype
from gateway.protocol.errors import InvalidRequest

_LENGTH = struct.Struct("<I")


def array_from_raw(buffer: bytes | bytearray | memoryview, datatype: str, shape: tuple[int, ...],
                   name: str) -> np.ndarray:
    """Interpret ``buffer`` as the tensor ``name``; raise InvalidRequest if its size does not fit."""
    dtype = numpy_dtype(datatype)
    count = prod(shape)
    if dtype.kind == "O":
        return _bytes_elements(memoryview(buffer), count, name).reshape(shape)
    expected = count * dtype.itemsize
    if len(buffer) != expected:
        raise InvalidRequest(
            f"input '{name}': {len(buffer)} bytes of data do not match shape {list(shape)} "
            f"of {datatype} ({expected} bytes expected)"
        )
    array = np.frombuffer(buffer, dtype=dtype.newbyteorder("<"), count=count)
    return array.reshape(shape)


def array_to_raw(array: np.ndarray) -> bytes | memoryview:
    """The tensor's wire bytes: a view of the array's memory when it is contiguous little-endian."""
    if array.dtype.kind == "O":
        return bytes_tensor_to_raw(array)
    if array.dtype.byteorder == ">":
        array = array.astype(array.dtype.newbyteorder("<"))
    return np.ascontiguousarray(array).reshape(-1).view(np.uint8).data  # bytes view, any dtype (BF16 too)


def bytes_tensor_to_raw(array: np.ndarray) -> bytes:
    """Length-prefix every element of a BYTES tensor, in row-major order."""
    parts: list[bytes] = []
    for element in array.reshape(-1):
        data = element if isinstance(element, bytes) else str(element).encode()
        parts.append(_LENGTH.pack(len(data)))
        parts.append(data)
    return b"".join(parts)


def _bytes_elements(view: memoryview, count: int, name: str) -> np.ndarray:
    out = np.empty(count, dtype=object)
    offset = 0
    for i in range(count):
        if offset + 4 > len(view):
            raise InvalidRequest(f"input '{name}': BYTES data ends after {i} of {count} elements")
        (length,) = _LENGTH.unpack_from(view, offset)
        offset += 4
        if offset + length > len(view):
            raise InvalidRequest(f"input '{name}': BYTES element {i} runs past the end of the data")
        out[i] = bytes(view[offset : offset + length])
        offset += length
    if offset != len(view):
        raise InvalidRequest(
            f"input '{name}': {len(view) - offset} bytes left over after {count} BYTES elements"
        )
    return out

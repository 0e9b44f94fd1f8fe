"""The tensors of a warm-up sample (Triton's ``model_warmup``): zeros, seeded random values, or a raw file.

A file holds the tensor as Triton's warm-up files do: the elements' raw little-endian bytes in
row-major order for one request's rows (``batch_size`` copies of the sample's shape), and for
BYTES each element as a 4-byte little-endian length and its bytes. A file with the wrong size is
an error naming the file, the sizes and the shape.
"""

import struct
from pathlib import Path

import numpy as np

from gateway.contract import WarmupInput, WarmupSample
from gateway.protocol.datatypes import numpy_dtype


class WarmupDataError(Exception):
    """A warm-up input cannot be built (its file is missing or has the wrong size)."""


def sample_arrays(sample: WarmupSample, batched: bool) -> dict[str, np.ndarray]:
    """The sample's inputs, with a batch dimension of ``sample.batch_size`` when the model batches."""
    rng = np.random.default_rng(0)
    return {t.name: _array(t, (sample.batch_size, *t.shape) if batched else t.shape, rng) for t in sample.inputs}


def _array(spec: WarmupInput, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    dtype = numpy_dtype(spec.datatype)
    count = int(np.prod(shape, dtype=np.int64))
    if spec.source == "file":
        return _from_file(spec, shape, dtype, count)
    if dtype.kind == "O":
        if spec.source == "zero":
            return np.full(shape, b"", dtype=object)
        return np.array([bytes(rng.integers(32, 127, 8, dtype=np.uint8)) for _ in range(count)],
                        dtype=object).reshape(shape)
    if spec.source == "zero":
        return np.zeros(shape, dtype=dtype)
    if dtype.kind == "b":
        return rng.integers(0, 2, shape).astype(dtype)
    if dtype.kind in "iu":
        return rng.integers(0, 100, shape).astype(dtype)
    return rng.random(shape).astype(dtype)


def _from_file(spec: WarmupInput, shape: tuple[int, ...], dtype: np.dtype, count: int) -> np.ndarray:
    path = Path(spec.file)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise WarmupDataError(f"input '{spec.name}': cannot read {path}: {exc.strerror or exc}") from None
    if dtype.kind == "O":
        return _bytes_elements(data, spec, path, shape, count)
    want = count * dtype.itemsize
    if len(data) != want:
        raise WarmupDataError(f"input '{spec.name}': {path} has {len(data)} bytes; {spec.datatype} {list(shape)} "
                              f"needs {want}")
    return np.frombuffer(data, dtype=dtype).reshape(shape)  # the machines we run on are little-endian


def _bytes_elements(data: bytes, spec: WarmupInput, path: Path, shape: tuple[int, ...], count: int) -> np.ndarray:
    elements: list[bytes] = []
    position = 0
    while position < len(data) and len(elements) < count:
        if position + 4 > len(data):
            break
        (length,) = struct.unpack_from("<I", data, position)
        position += 4
        if position + length > len(data):
            break
        elements.append(data[position:position + length])
        position += length
    if len(elements) != count or position != len(data):
        raise WarmupDataError(f"input '{spec.name}': {path} does not hold {count} length-prefixed BYTES elements "
                              f"for shape {list(shape)} (4-byte little-endian length, then the bytes)")
    return np.array(elements, dtype=object).reshape(shape)

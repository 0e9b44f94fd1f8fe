"""TensorFlow's TensorProto <-> numpy arrays, as TF Serving's clients write and read them.

Inputs may carry their elements in ``tensor_content`` (raw little-endian bytes: what
``tf.make_tensor_proto`` writes for arrays, viewed here without a copy) or in the typed field
of their dtype (``float_val``, ``int_val``, ...; one value fills the whole shape, as in
TensorFlow). Outputs are written as TF Serving writes them: ``tensor_content`` for numbers,
``string_val`` for DT_STRING.
"""

from math import prod

import numpy as np

from gateway.protocol.datatypes import numpy_dtype
from gateway.protocol.errors import InvalidRequest
from gateway.protocol.raw import array_from_raw, array_to_raw
from gateway.tfserving.datatypes import datatype_of_dt, dt_name, dt_number
from gateway.tfserving.generated import tf_framework_pb2 as tf_pb

#: The typed field that holds each datatype's elements when tensor_content is empty.
VALUE_FIELD = {
    "FP32": "float_val", "FP64": "double_val", "INT32": "int_val", "INT16": "int_val", "INT8": "int_val",
    "UINT8": "int_val", "UINT16": "int_val", "INT64": "int64_val", "BOOL": "bool_val", "BYTES": "string_val",
    "FP16": "half_val", "BF16": "half_val", "UINT32": "uint32_val", "UINT64": "uint64_val",
}
_ALL_FIELDS = sorted(set(VALUE_FIELD.values()))


def decode_tensor(proto: tf_pb.TensorProto, name: str) -> np.ndarray:
    """The elements of input ``name`` (their dtype is its datatype); InvalidRequest naming it when they do not fit."""
    datatype = datatype_of_dt(proto.dtype, name)
    if proto.tensor_shape.unknown_rank:
        raise InvalidRequest(f"input '{name}': tensor_shape has unknown_rank; a tensor needs its shape")
    shape = tuple(d.size for d in proto.tensor_shape.dim)
    if any(d < 0 for d in shape):
        raise InvalidRequest(f"input '{name}': tensor_shape {list(shape)} has a negative dimension")
    if proto.tensor_content:
        if datatype == "BYTES":
            raise InvalidRequest(f"input '{name}': DT_STRING elements go in string_val, not tensor_content")
        return array_from_raw(proto.tensor_content, datatype, shape, name)
    return _from_values(proto, datatype, shape, name)


def encode_tensor(array: np.ndarray, datatype: str) -> tf_pb.TensorProto:
    proto = tf_pb.TensorProto(dtype=dt_number(datatype))  # type: ignore[arg-type]  # an enum's number
    proto.tensor_shape.dim.extend(tf_pb.TensorShapeProto.Dim(size=d) for d in array.shape)
    if datatype == "BYTES":
        proto.string_val.extend(e if isinstance(e, bytes) else str(e).encode() for e in array.reshape(-1))
    else:
        raw = array_to_raw(array)
        proto.tensor_content = raw if isinstance(raw, bytes) else raw.tobytes()
    return proto


def _from_values(proto: tf_pb.TensorProto, datatype: str, shape: tuple[int, ...], name: str) -> np.ndarray:
    field = VALUE_FIELD[datatype]
    values = getattr(proto, field)
    count = prod(shape)
    if len(values) not in (count, 1) or (len(values) == 1 and count == 0):
        others = [f for f in _ALL_FIELDS if f != field and len(getattr(proto, f))]
        if others and not len(values):
            raise InvalidRequest(f"input '{name}': {dt_name(datatype)} elements belong in {field}, not {others[0]}")
        raise InvalidRequest(f"input '{name}': {len(values)} elements in {field} do not fill tensor_shape "
                             f"{list(shape)} ({count} elements)")
    dtype = numpy_dtype(datatype)
    if datatype == "BYTES":
        flat = np.empty(len(values), dtype=object)
        flat[:] = list(values)
    elif field == "half_val":
        flat = np.fromiter(values, dtype=np.int64, count=len(values)).astype(np.uint16).view(dtype)
    else:
        wide = np.fromiter(values, dtype=np.int64 if dtype.kind == "i" else np.uint64 if dtype.kind == "u" else dtype,
                           count=len(values))
        if dtype.kind in "iu" and wide.size and wide.dtype != dtype:
            info = np.iinfo(dtype)
            if wide.min() < info.min or wide.max() > info.max:
                raise InvalidRequest(f"input '{name}': {field} values are out of range for {dt_name(datatype)}")
        flat = wide.astype(dtype, copy=False)
    if len(flat) == count:
        return flat.reshape(shape)
    return np.full(shape, flat[0], dtype=dtype)  # one value fills the tensor, as TensorFlow reads it

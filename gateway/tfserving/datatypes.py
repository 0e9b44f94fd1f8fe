"""TensorFlow's DataType enum <-> the protocol's datatypes: every TF type TensorGate can serve."""

from typing import Final

from gateway.protocol.errors import InvalidRequest

#: Protocol datatype -> (TensorFlow's name, its DataType number).
TF_DTYPES: Final[dict[str, tuple[str, int]]] = {
    "FP32": ("DT_FLOAT", 1),
    "FP64": ("DT_DOUBLE", 2),
    "INT32": ("DT_INT32", 3),
    "UINT8": ("DT_UINT8", 4),
    "INT16": ("DT_INT16", 5),
    "INT8": ("DT_INT8", 6),
    "BYTES": ("DT_STRING", 7),
    "INT64": ("DT_INT64", 9),
    "BOOL": ("DT_BOOL", 10),
    "BF16": ("DT_BFLOAT16", 14),
    "UINT16": ("DT_UINT16", 17),
    "FP16": ("DT_HALF", 19),
    "UINT32": ("DT_UINT32", 22),
    "UINT64": ("DT_UINT64", 23),
}
_BY_NUMBER: Final[dict[int, str]] = {number: datatype for datatype, (_, number) in TF_DTYPES.items()}


def dt_name(datatype: str) -> str:
    """``DT_FLOAT`` for ``FP32``, and so on."""
    return TF_DTYPES[datatype][0]


def dt_number(datatype: str) -> int:
    return TF_DTYPES[datatype][1]


def datatype_of_dt(number: int, name: str) -> str:
    """The protocol datatype of a TensorProto's ``dtype``; InvalidRequest for a type not served."""
    datatype = _BY_NUMBER.get(number)
    if datatype is None:
        served = ", ".join(n for n, _ in TF_DTYPES.values())
        raise InvalidRequest(f"input '{name}': dtype {number} is not one TensorGate serves ({served})")
    return datatype

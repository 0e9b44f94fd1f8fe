"""The common request schema shared by every transport, and the codecs to and from it.

Transports decode the wire into these types, the data plane works on them, and the
codecs encode them back; nothing in here knows HTTP, gRPC or a framework.
"""

from gateway.protocol.datatypes import DATATYPES, datatype_of, element_size, numpy_dtype
from gateway.protocol.errors import (
    AlreadyExists,
    InferenceFailed,
    InvalidRequest,
    LimitReached,
    NotFound,
    PayloadTooLarge,
    QueueTimeout,
    TensorGateError,
    Unavailable,
    Unsupported,
)
from gateway.protocol.types import (
    InferInput,
    InferOutput,
    InferRequest,
    InferResponse,
    Parameters,
    ParameterValue,
    RequestedOutput,
    SharedMemoryRef,
)

__all__ = [
    "DATATYPES",
    "AlreadyExists",
    "InferInput",
    "InferOutput",
    "InferRequest",
    "InferResponse",
    "InferenceFailed",
    "InvalidRequest",
    "LimitReached",
    "NotFound",
    "ParameterValue",
    "Parameters",
    "PayloadTooLarge",
    "QueueTimeout",
    "RequestedOutput",
    "SharedMemoryRef",
    "TensorGateError",
    "Unavailable",
    "Unsupported",
    "datatype_of",
    "element_size",
    "numpy_dtype",
]

"""The transport-free request and response types every layer passes around.

Tensor data is always a numpy array whose shape is the tensor's shape; BYTES tensors
are object arrays of ``bytes``. Whether an output travels as binary is a property of
the *request* (``RequestedOutput.binary``), never of the data.
"""

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from gateway.contract import RequestTrace

ParameterValue = bool | int | float | str
Parameters = dict[str, ParameterValue]


@dataclass(frozen=True, slots=True)
class SharedMemoryRef:
    """Where a tensor's bytes lie in a registered shared-memory region (Triton's three parameters)."""

    region: str
    offset: int
    byte_size: int

    def as_parameters(self) -> Parameters:
        return {"shared_memory_region": self.region, "shared_memory_byte_size": self.byte_size,
                "shared_memory_offset": self.offset}


@dataclass(slots=True)
class InferInput:
    """One named input tensor of a request, already decoded into an array."""

    name: str
    datatype: str
    data: np.ndarray
    parameters: Parameters = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.data.shape)


@dataclass(slots=True)
class RequestedOutput:
    """An output the client asked for; ``binary`` is None when the client left it to the default.

    ``shared_memory`` is set when the output is to be written into a registered region
    instead of travelling in the response.
    """

    name: str
    binary: bool | None = None
    parameters: Parameters = field(default_factory=dict)
    shared_memory: SharedMemoryRef | None = None


@dataclass(slots=True)
class InferRequest:
    """An inference request for one model; ``outputs`` None means every output."""

    model_name: str
    model_version: str | None
    inputs: list[InferInput]
    id: str | None = None
    outputs: list[RequestedOutput] | None = None
    parameters: Parameters = field(default_factory=dict)


@dataclass(slots=True)
class InferOutput:
    """One named output tensor of a response."""

    name: str
    datatype: str
    data: np.ndarray

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.data.shape)


@dataclass(slots=True)
class InferResponse:
    """The answer to one InferRequest, outputs in the order the client asked for them.

    The outputs may be views into shared memory: the transport calls ``release`` once it has
    encoded them (and must not touch them after). ``trace``: a traced request's queue and batch.
    """

    model_name: str
    model_version: str
    outputs: list[InferOutput]
    id: str | None = None
    parameters: Parameters = field(default_factory=dict)
    release: Callable[[], None] | None = None
    trace: "RequestTrace | None" = None

    def done(self) -> None:
        """The outputs have been encoded: give their memory back."""
        if self.release is not None:
            self.release()
            self.release = None

"""ModelInferRequest / ModelInferResponse (protobuf) <-> the common schema.

``raw_input_contents`` entries are viewed with ``np.frombuffer`` (no per-element work);
typed ``contents`` are read with ``np.fromiter`` from the one field the datatype uses.
Responses always carry their tensors in ``raw_output_contents``, as Triton's do, which
every Triton client reads.
"""

from math import prod
from typing import Any

import numpy as np

from gateway.grpc.generated import grpc_service_pb2 as pb
from gateway.protocol.datatypes import DATATYPES, numpy_dtype
from gateway.protocol.errors import InvalidRequest, Unsupported
from gateway.protocol.raw import array_from_raw, array_to_raw
from gateway.protocol.system_shm import NO_SHARED_MEMORY, REGION, SystemSharedMemory, shared_memory_ref
from gateway.protocol.types import (
    InferInput,
    InferRequest,
    InferResponse,
    Parameters,
    RequestedOutput,
    SharedMemoryRef,
)

#: The InferTensorContents field that holds each datatype's elements (FP16/BF16: raw only).
CONTENTS_FIELD = {
    "BOOL": "bool_contents", "UINT8": "uint_contents", "UINT16": "uint_contents",
    "UINT32": "uint_contents", "UINT64": "uint64_contents", "INT8": "int_contents",
    "INT16": "int_contents", "INT32": "int_contents", "INT64": "int64_contents",
    "FP32": "fp32_contents", "FP64": "fp64_contents", "BYTES": "bytes_contents",
}
_ALL_FIELDS = sorted(set(CONTENTS_FIELD.values()))


def decode_infer_request(message: pb.ModelInferRequest, shm: SystemSharedMemory | None = None) -> InferRequest:
    """Decode a ModelInferRequest; inputs and outputs with shared-memory parameters use ``shm``.

    As in Triton, ``raw_input_contents`` holds one entry per input *not* in shared memory,
    in input order.
    """
    registry = NO_SHARED_MEMORY if shm is None else shm
    raw = message.raw_input_contents
    if raw and len(raw) > len(message.inputs):
        raise InvalidRequest(
            f"raw_input_contents has {len(raw)} entries for {len(message.inputs)} inputs"
        )
    if not message.inputs:
        raise InvalidRequest("the request has no inputs")
    inputs = []
    used = 0
    for tensor in message.inputs:
        if tensor.datatype not in DATATYPES:
            raise InvalidRequest(
                f"input '{tensor.name}': datatype {tensor.datatype!r} is not one of {', '.join(DATATYPES)}"
            )
        if any(d < 0 for d in tensor.shape):
            raise InvalidRequest(f"input '{tensor.name}': shape dimensions must be non-negative")
        shape = tuple(tensor.shape)
        parameters = decode_parameters(tensor.parameters)
        if parameters and (ref := shared_memory_ref(parameters, "input", tensor.name)) is not None:
            if tensor.HasField("contents"):
                raise InvalidRequest(
                    f"input '{tensor.name}': contents must not be set for an input in shared memory"
                )
            data = registry.input_view(ref, tensor.datatype, shape, tensor.name)
        elif raw:
            if tensor.HasField("contents"):
                raise InvalidRequest(
                    f"input '{tensor.name}': contents must not be set when raw_input_contents is used"
                )
            if used == len(raw):
                raise _raw_count_mismatch(message)
            data = array_from_raw(raw[used], tensor.datatype, shape, tensor.name)
            used += 1
        else:
            data = _from_contents(tensor, shape)
        inputs.append(InferInput(tensor.name, tensor.datatype, data, parameters))
    if used != len(raw):
        raise _raw_count_mismatch(message)
    outputs = [_requested_output(o, registry) for o in message.outputs]
    return InferRequest(
        model_name=message.model_name,
        model_version=message.model_version or None,
        inputs=inputs,
        id=message.id or None,
        outputs=outputs or None,
        parameters=decode_parameters(message.parameters),
    )


def encode_infer_response(response: InferResponse,
                          shm_outputs: dict[str, SharedMemoryRef] | None = None) -> pb.ModelInferResponse:
    """Encode a response; outputs in ``shm_outputs`` (already written to shared memory) carry
    their shared-memory parameters and an empty ``raw_output_contents`` entry, as Triton's do,
    so the entries stay aligned with ``outputs``."""
    message = pb.ModelInferResponse(
        model_name=response.model_name, model_version=response.model_version, id=response.id or "",
    )
    for output in response.outputs:
        tensor = message.outputs.add(name=output.name, datatype=output.datatype, shape=list(output.shape))
        placed = shm_outputs.get(output.name) if shm_outputs else None
        if placed is not None:
            for key, value in placed.as_parameters().items():
                tensor.parameters[key].CopyFrom(encode_parameter(value))
            message.raw_output_contents.append(b"")
            continue
        raw = array_to_raw(output.data)
        message.raw_output_contents.append(raw if isinstance(raw, bytes) else raw.tobytes())
    for key, value in response.parameters.items():
        message.parameters[key].CopyFrom(encode_parameter(value))
    return message


def _raw_count_mismatch(message: pb.ModelInferRequest) -> InvalidRequest:
    outside = sum(1 for tensor in message.inputs if REGION not in tensor.parameters)
    where = "" if outside == len(message.inputs) else " outside shared memory"
    return InvalidRequest(
        f"raw_input_contents has {len(message.raw_input_contents)} entries for {outside} inputs{where}"
    )


def _requested_output(output: pb.ModelInferRequest.InferRequestedOutputTensor,
                      shm: SystemSharedMemory) -> RequestedOutput:
    parameters = decode_parameters(output.parameters)
    ref = shared_memory_ref(parameters, "output", output.name) if parameters else None
    if ref is not None:
        shm.check_output(ref, output.name)
    return RequestedOutput(output.name, None, parameters, ref)


def decode_parameters(parameters: Any) -> Parameters:
    out: Parameters = {}
    for key, value in parameters.items():
        choice = value.WhichOneof("parameter_choice")
        if choice is not None:
            out[key] = getattr(value, choice)
    return out


def encode_parameter(value: bool | int | float | str) -> pb.InferParameter:
    if isinstance(value, bool):
        return pb.InferParameter(bool_param=value)
    if isinstance(value, int):
        return pb.InferParameter(int64_param=value)
    if isinstance(value, float):
        return pb.InferParameter(double_param=value)
    return pb.InferParameter(string_param=value)


def _from_contents(tensor: pb.ModelInferRequest.InferInputTensor, shape: tuple[int, ...]) -> np.ndarray:
    name, datatype = tensor.name, tensor.datatype
    field = CONTENTS_FIELD.get(datatype)
    if field is None:
        raise Unsupported(f"input '{name}': {datatype} has no typed contents field; send it in raw_input_contents")
    contents = tensor.contents
    values = getattr(contents, field)
    count = prod(shape)
    if len(values) != count:
        others = [f for f in _ALL_FIELDS if f != field and len(getattr(contents, f))]
        if others and not len(values):
            raise InvalidRequest(f"input '{name}': {datatype} data belongs in contents.{field}, not {others[0]}")
        raise InvalidRequest(f"input '{name}': {len(values)} elements in contents do not match shape {list(shape)}")
    dtype = numpy_dtype(datatype)
    if datatype == "BYTES":
        array = np.empty(count, dtype=object)
        array[:] = list(values)
        return array.reshape(shape)
    wide = np.fromiter(values, dtype=np.int64 if dtype.kind == "i" else
                       np.uint64 if dtype.kind == "u" else dtype, count=count)
    if dtype.kind in "iu" and count and wide.dtype != dtype:
        info = np.iinfo(dtype)
        if wide.min() < info.min or wide.max() > info.max:
            raise InvalidRequest(f"input '{name}': contents are out of range for {datatype}")
    return wide.astype(dtype, copy=False).reshape(shape)

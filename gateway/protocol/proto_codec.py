"""ModelInferRequest / ModelInferResponse (protobuf) <-> the common schema.

``raw_input_contents`` entries are viewed with ``np.frombuffer`` (no per-element work);
typed ``contents`` are read with ``np.fromiter`` from the one field the datatype uses.
Responses always carry their tensors in ``raw_output_contents``, as Triton's do, which
every Triton client reads.
"""

from typing import Any

import numpy as np

from gateway.grpc.generated import grpc_service_pb2 as pb
from gateway.protocol.datatypes import DATATYPES, numpy_dtype
from gateway.protocol.errors import InvalidRequest, Unsupported
from gateway.protocol.raw import array_from_raw, array_to_raw
from gateway.protocol.types import InferInput, InferRequest, InferResponse, Parameters, RequestedOutput

#: The InferTensorContents field that holds each datatype's elements (FP16/BF16: raw only).
CONTENTS_FIELD = {
    "BOOL": "bool_contents", "UINT8": "uint_contents", "UINT16": "uint_contents",
    "UINT32": "uint_contents", "UINT64": "uint64_contents", "INT8": "int_contents",
    "INT16": "int_contents", "INT32": "int_contents", "INT64": "int64_contents",
    "FP32": "fp32_contents", "FP64": "fp64_contents", "BYTES": "bytes_contents",
}
_ALL_FIELDS = sorted(set(CONTENTS_FIELD.values()))


def decode_infer_request(message: pb.ModelInferRequest) -> InferRequest:
    raw = message.raw_input_contents
    if raw and len(raw) != len(message.inputs):
        raise InvalidRequest(
            f"raw_input_contents has {len(raw)} entries for {len(message.inputs)} inputs"
        )
    if not message.inputs:
        raise InvalidRequest("the request has no inputs")
    inputs = []
    for position, tensor in enumerate(message.inputs):
        if tensor.datatype not in DATATYPES:
            raise InvalidRequest(
                f"input '{tensor.name}': datatype {tensor.datatype!r} is not one of {', '.join(DATATYPES)}"
            )
        if any(d < 0 for d in tensor.shape):
            raise InvalidRequest(f"input '{tensor.name}': shape dimensions must be non-negative")
        shape = tuple(tensor.shape)
        if raw:
            if tensor.HasField("contents"):
                raise InvalidRequest(
                    f"input '{tensor.name}': contents must not be set when raw_input_contents is used"
                )
            data = array_from_raw(raw[position], tensor.datatype, shape, tensor.name)
        else:
            data = _from_contents(tensor, shape)
        inputs.append(InferInput(tensor.name, tensor.datatype, data, decode_parameters(tensor.parameters)))
    outputs = [RequestedOutput(o.name, None, decode_parameters(o.parameters)) for o in message.outputs]
    return InferRequest(
        model_name=message.model_name,
        model_version=message.model_version or None,
        inputs=inputs,
        id=message.id or None,
        outputs=outputs or None,
        parameters=decode_parameters(message.parameters),
    )


def encode_infer_response(response: InferResponse) -> pb.ModelInferResponse:
    message = pb.ModelInferResponse(
        model_name=response.model_name, model_version=response.model_version, id=response.id or "",
    )
    for output in response.outputs:
        message.outputs.add(name=output.name, datatype=output.datatype, shape=list(output.shape))
        raw = array_to_raw(output.data)
        message.raw_output_contents.append(raw if isinstance(raw, bytes) else raw.tobytes())
    for key, value in response.parameters.items():
        message.parameters[key].CopyFrom(encode_parameter(value))
    return message


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
    count = int(np.prod(shape))
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

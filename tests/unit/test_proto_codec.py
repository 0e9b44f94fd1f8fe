"""ModelInferRequest / ModelInferResponse <-> the common schema (gateway/protocol/proto_codec.py)."""

from typing import Any

import ml_dtypes
import numpy as np
import pytest

from gateway.grpc.generated import grpc_service_pb2 as pb
from gateway.protocol.datatypes import DATATYPES, numpy_dtype
from gateway.protocol.errors import InvalidRequest, Unsupported
from gateway.protocol.proto_codec import (
    CONTENTS_FIELD,
    decode_infer_request,
    decode_parameters,
    encode_infer_response,
    encode_parameter,
)
from gateway.protocol.raw import bytes_tensor_to_raw
from gateway.protocol.types import InferOutput, InferResponse

TYPED_VALUES: dict[str, list[Any]] = {
    "BOOL": [True, False, True, False],
    "UINT8": [0, 1, 200, 255],
    "UINT16": [0, 1, 60000, 65535],
    "UINT32": [0, 1, 2**31, 2**32 - 1],
    "UINT64": [0, 1, 2**63, 2**64 - 1],
    "INT8": [-128, -1, 0, 127],
    "INT16": [-32768, -1, 0, 32767],
    "INT32": [-(2**31), -1, 0, 2**31 - 1],
    "INT64": [-(2**63), -1, 0, 2**63 - 1],
    "FP32": [0.5, -1.25, 3.0, 2.0**100],
    "FP64": [0.5, -1.25, 3.0, 1e300],
    "BYTES": [b"a", b"", b"\xff\xfe", "é".encode()],
}

RAW_SAMPLES: dict[str, np.ndarray] = {
    **{d: np.array(v, dtype=numpy_dtype(d)).reshape(2, 2) for d, v in TYPED_VALUES.items() if d != "BYTES"},
    "FP16": np.array([[0.5, -1.5], [65504.0, 0.0]], dtype=np.float16),
    "BF16": np.array([[0.5, -1.5], [256.0, 0.0]], dtype=ml_dtypes.bfloat16),
    "BYTES": np.array([[b"a", b""], [b"\xff\xfe", b"xyz"]], dtype=object),
}


def _request(*inputs: pb.ModelInferRequest.InferInputTensor, raw: list[bytes] | None = None,
             **fields: Any) -> pb.ModelInferRequest:
    message = pb.ModelInferRequest(model_name="m", **fields)
    message.inputs.extend(inputs)
    if raw is not None:
        message.raw_input_contents.extend(raw)
    return message


def _tensor(name: str, datatype: str, shape: list[int], **contents: Any) -> pb.ModelInferRequest.InferInputTensor:
    tensor = pb.ModelInferRequest.InferInputTensor(name=name, datatype=datatype, shape=shape)
    if contents:
        tensor.contents.CopyFrom(pb.InferTensorContents(**contents))
    return tensor


def _raw(array: np.ndarray) -> bytes:
    if array.dtype.kind == "O":
        return bytes_tensor_to_raw(array)
    return array.astype(array.dtype.newbyteorder("<")).tobytes()


def test_every_datatype_but_fp16_and_bf16_has_a_contents_field() -> None:
    assert set(CONTENTS_FIELD) == set(DATATYPES) - {"FP16", "BF16"}


@pytest.mark.parametrize("datatype", list(TYPED_VALUES))
def test_decode_typed_contents(datatype: str) -> None:
    values = TYPED_VALUES[datatype]
    field = CONTENTS_FIELD[datatype]
    request = decode_infer_request(_request(_tensor("x", datatype, [2, 2], **{field: values})))
    (tensor,) = request.inputs
    assert tensor.name == "x" and tensor.datatype == datatype
    assert tensor.data.dtype == numpy_dtype(datatype)
    assert tensor.data.shape == (2, 2)
    assert tensor.data.reshape(-1).tolist() == values


@pytest.mark.parametrize("datatype", sorted(RAW_SAMPLES))
def test_decode_raw_input_contents(datatype: str) -> None:
    array = RAW_SAMPLES[datatype]
    request = decode_infer_request(_request(_tensor("x", datatype, [2, 2]), raw=[_raw(array)]))
    data = request.inputs[0].data
    assert data.dtype == numpy_dtype(datatype)
    assert data.shape == (2, 2)
    assert np.array_equal(data, array)


def test_decode_raw_for_several_inputs_in_order() -> None:
    a = np.array([1, 2, 3], dtype=np.int32)
    b = np.array([b"x", b"yz"], dtype=object)
    request = decode_infer_request(_request(_tensor("a", "INT32", [3]), _tensor("b", "BYTES", [2]),
                                            raw=[_raw(a), _raw(b)]))
    assert request.inputs[0].data.tolist() == [1, 2, 3]
    assert request.inputs[1].data.tolist() == [b"x", b"yz"]


def test_decode_request_fields() -> None:
    message = _request(_tensor("x", "INT32", [1], int_contents=[1]), id="req-1", model_version="2")
    message.parameters["priority"].int64_param = 3
    message.inputs[0].parameters["tag"].string_param = "t"
    message.outputs.add(name="y").parameters["binary_data"].bool_param = True
    request = decode_infer_request(message)
    assert request.model_name == "m"
    assert request.model_version == "2"
    assert request.id == "req-1"
    assert request.parameters == {"priority": 3}
    assert request.inputs[0].parameters == {"tag": "t"}
    assert request.outputs is not None
    assert [(o.name, o.binary, o.parameters) for o in request.outputs] == [("y", None, {"binary_data": True})]


def test_decode_empty_id_version_and_outputs_are_none() -> None:
    request = decode_infer_request(_request(_tensor("x", "INT32", [1], int_contents=[1])))
    assert request.id is None
    assert request.model_version is None
    assert request.outputs is None


def test_decode_no_inputs() -> None:
    with pytest.raises(InvalidRequest, match="no inputs"):
        decode_infer_request(_request())


def test_decode_unknown_datatype() -> None:
    with pytest.raises(InvalidRequest, match="input 'x': datatype 'FLOAT' is not one of"):
        decode_infer_request(_request(_tensor("x", "FLOAT", [1], fp32_contents=[1.0])))


def test_decode_negative_dimension() -> None:
    with pytest.raises(InvalidRequest, match="input 'x': shape dimensions must be non-negative"):
        decode_infer_request(_request(_tensor("x", "FP32", [-1], fp32_contents=[1.0])))


def test_decode_mixing_raw_and_contents() -> None:
    message = _request(_tensor("x", "INT32", [1], int_contents=[1]), raw=[b"\x01\x00\x00\x00"])
    with pytest.raises(InvalidRequest, match="input 'x': contents must not be set when raw_input_contents is used"):
        decode_infer_request(message)


def test_decode_raw_count_mismatch() -> None:
    message = _request(_tensor("a", "INT32", [1]), _tensor("b", "INT32", [1]), raw=[b"\x01\x00\x00\x00"])
    with pytest.raises(InvalidRequest, match="raw_input_contents has 1 entries for 2 inputs"):
        decode_infer_request(message)


def test_decode_raw_size_mismatch_names_the_input() -> None:
    with pytest.raises(InvalidRequest, match="input 'x': 3 bytes of data do not match shape"):
        decode_infer_request(_request(_tensor("x", "INT32", [1]), raw=[b"\x00\x00\x00"]))


@pytest.mark.parametrize("datatype", ["FP16", "BF16"])
def test_decode_half_precision_in_typed_contents_is_unsupported(datatype: str) -> None:
    message = _request(_tensor("x", datatype, [1], fp32_contents=[1.0]))
    with pytest.raises(Unsupported, match=f"input 'x': {datatype} has no typed contents field.*raw_input_contents"):
        decode_infer_request(message)


@pytest.mark.parametrize(
    ("datatype", "wrong", "right"),
    [("INT32", "int64_contents", "int_contents"), ("FP32", "fp64_contents", "fp32_contents"),
     ("UINT8", "int_contents", "uint_contents"), ("INT64", "int_contents", "int64_contents")],
)
def test_decode_data_in_the_wrong_contents_field_names_the_right_one(datatype: str, wrong: str, right: str) -> None:
    message = _request(_tensor("x", datatype, [2], **{wrong: [1, 2]}))
    with pytest.raises(InvalidRequest, match=f"input 'x': {datatype} data belongs in contents.{right}, not {wrong}"):
        decode_infer_request(message)


def test_decode_contents_count_mismatch() -> None:
    message = _request(_tensor("x", "INT32", [2, 2], int_contents=[1, 2, 3]))
    with pytest.raises(InvalidRequest, match=r"input 'x': 3 elements in contents do not match shape \[2, 2\]"):
        decode_infer_request(message)


@pytest.mark.parametrize("value", [128, -129, 1000])
def test_decode_out_of_range_int_contents_for_int8(value: int) -> None:
    message = _request(_tensor("x", "INT8", [2], int_contents=[0, value]))
    with pytest.raises(InvalidRequest, match="input 'x': contents are out of range for INT8"):
        decode_infer_request(message)


def test_decode_out_of_range_uint_contents_for_uint16() -> None:
    message = _request(_tensor("x", "UINT16", [1], uint_contents=[65536]))
    with pytest.raises(InvalidRequest, match="out of range for UINT16"):
        decode_infer_request(message)


def test_decode_empty_tensor_from_contents() -> None:
    request = decode_infer_request(_request(_tensor("x", "FP32", [0, 3])))
    assert request.inputs[0].data.shape == (0, 3)


# --- encode_infer_response -----------------------------------------------------------------------------------


def test_encode_puts_tensors_in_raw_output_contents_in_order() -> None:
    a = np.array([[1.5, 2.0]], dtype=np.float32)
    b = np.array([b"x", b"\xff"], dtype=object)
    c = np.array([True, False])
    response = InferResponse("m", "3", [InferOutput("a", "FP32", a), InferOutput("b", "BYTES", b),
                                        InferOutput("c", "BOOL", c)], id="req-9")
    message = encode_infer_response(response)
    assert message.model_name == "m"
    assert message.model_version == "3"
    assert message.id == "req-9"
    assert [(o.name, o.datatype, list(o.shape)) for o in message.outputs] == [
        ("a", "FP32", [1, 2]), ("b", "BYTES", [2]), ("c", "BOOL", [2])]
    assert all(not o.HasField("contents") for o in message.outputs)
    assert list(message.raw_output_contents) == [a.tobytes(), bytes_tensor_to_raw(b), b"\x01\x00"]


def test_encode_without_id_leaves_it_empty() -> None:
    message = encode_infer_response(InferResponse("m", "1", [InferOutput("a", "INT8", np.array([1], np.int8))]))
    assert message.id == ""


def test_encode_survives_serialization() -> None:
    a = np.arange(4, dtype=np.int64)
    message = encode_infer_response(InferResponse("m", "1", [InferOutput("a", "INT64", a)]))
    parsed = pb.ModelInferResponse.FromString(message.SerializeToString())
    assert np.frombuffer(parsed.raw_output_contents[0], dtype="<i8").tolist() == [0, 1, 2, 3]


def test_encode_fp16_output() -> None:
    a = np.array([0.5, -1.0], dtype=np.float16)
    message = encode_infer_response(InferResponse("m", "1", [InferOutput("a", "FP16", a)]))
    assert message.raw_output_contents[0] == a.tobytes()


def test_encode_bf16_output() -> None:
    a = np.array([1.0, 2.0], dtype=ml_dtypes.bfloat16)
    message = encode_infer_response(InferResponse("m", "1", [InferOutput("a", "BF16", a)]))
    assert message.raw_output_contents[0] == b"\x80\x3f\x00\x40"


def test_encode_parameters_of_each_type() -> None:
    response = InferResponse("m", "1", [], parameters={"b": True, "i": 7, "d": 0.5, "s": "text"})
    message = encode_infer_response(response)
    assert message.parameters["b"].WhichOneof("parameter_choice") == "bool_param"
    assert message.parameters["b"].bool_param is True
    assert message.parameters["i"].WhichOneof("parameter_choice") == "int64_param"
    assert message.parameters["i"].int64_param == 7
    assert message.parameters["d"].WhichOneof("parameter_choice") == "double_param"
    assert message.parameters["d"].double_param == 0.5
    assert message.parameters["s"].WhichOneof("parameter_choice") == "string_param"
    assert message.parameters["s"].string_param == "text"


@pytest.mark.parametrize("value", [True, False, 0, -5, 2**62, 1.25, "", "x y"])
def test_parameter_round_trip(value: bool | int | float | str) -> None:
    message = pb.ModelInferRequest()
    message.parameters["k"].CopyFrom(encode_parameter(value))
    decoded = decode_parameters(message.parameters)["k"]
    assert decoded == value
    assert type(decoded) is type(value)


def test_decode_parameters_skips_unset_values() -> None:
    message = pb.ModelInferRequest()
    message.parameters["empty"].CopyFrom(pb.InferParameter())
    assert decode_parameters(message.parameters) == {}

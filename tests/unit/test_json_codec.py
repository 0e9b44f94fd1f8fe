"""The v2 JSON body <-> the common schema, with the binary tensor data extension."""

import struct
from typing import Any

import ml_dtypes
import numpy as np
import orjson
import pytest

from gateway.protocol.errors import InvalidRequest, Unsupported
from gateway.protocol.json_codec import binary_output_names, decode_request, encode_response
from gateway.protocol.types import InferOutput, InferRequest, InferResponse, RequestedOutput


def _decode(body: Any, binary: bytes | None = None) -> InferRequest:
    header = orjson.dumps(body)
    return decode_request(header, memoryview(binary) if binary is not None else None, "m", None)


def _input(name: str = "x", datatype: str = "FP32", shape: list[int] | None = None, **extra: Any) -> dict[str, Any]:
    return {"name": name, "datatype": datatype, "shape": [2] if shape is None else shape, **extra}


def _response(*outputs: InferOutput, **extra: Any) -> InferResponse:
    return InferResponse(model_name="m", model_version="1", outputs=list(outputs), **extra)


# --- decode_request: plain JSON data ---------------------------------------------------------------------------


def test_decode_flat_data() -> None:
    request = _decode({"inputs": [_input(shape=[2, 2], data=[1, 2, 3, 4])]})
    (tensor,) = request.inputs
    assert tensor.name == "x" and tensor.datatype == "FP32"
    assert tensor.data.dtype == np.float32
    assert tensor.data.shape == (2, 2)
    assert tensor.data.tolist() == [[1, 2], [3, 4]]


def test_decode_nested_data() -> None:
    request = _decode({"inputs": [_input(datatype="INT64", shape=[2, 2], data=[[1, 2], [3, 4]])]})
    assert request.inputs[0].data.dtype == np.int64
    assert request.inputs[0].data.tolist() == [[1, 2], [3, 4]]


def test_decode_model_name_and_version_come_from_the_caller() -> None:
    request = decode_request(orjson.dumps({"inputs": [_input(data=[1, 2])]}), None, "resnet", "3")
    assert request.model_name == "resnet"
    assert request.model_version == "3"


def test_decode_id_and_parameters() -> None:
    request = _decode({"id": "req-7", "parameters": {"priority": 2, "tag": "a", "flag": True},
                       "inputs": [_input(data=[1, 2], parameters={"content_type": "np"})]})
    assert request.id == "req-7"
    assert request.parameters == {"priority": 2, "tag": "a", "flag": True}
    assert request.inputs[0].parameters == {"content_type": "np"}


def test_decode_without_id_or_outputs() -> None:
    request = _decode({"inputs": [_input(data=[1, 2])]})
    assert request.id is None
    assert request.outputs is None
    assert request.parameters == {}


def test_decode_non_string_id_is_rejected() -> None:
    with pytest.raises(InvalidRequest, match="'id' must be a string"):
        _decode({"id": 5, "inputs": [_input(data=[1, 2])]})


def test_decode_requested_outputs_with_binary_data() -> None:
    request = _decode({"inputs": [_input(data=[1, 2])],
                       "outputs": [{"name": "a", "parameters": {"binary_data": True}},
                                   {"name": "b", "parameters": {"binary_data": False, "other": 1}},
                                   {"name": "c"}]})
    assert request.outputs == [RequestedOutput("a", True, {}), RequestedOutput("b", False, {"other": 1}),
                               RequestedOutput("c", None, {})]


def test_decode_non_boolean_binary_data_is_rejected() -> None:
    with pytest.raises(InvalidRequest, match="output 'a': binary_data must be a boolean"):
        _decode({"inputs": [_input(data=[1, 2])], "outputs": [{"name": "a", "parameters": {"binary_data": 1}}]})


def test_decode_classification_is_unsupported() -> None:
    with pytest.raises(Unsupported, match="classification"):
        _decode({"inputs": [_input(data=[1, 2])], "outputs": [{"name": "a", "parameters": {"classification": 3}}]})


def test_decode_malformed_json() -> None:
    with pytest.raises(InvalidRequest, match="malformed JSON"):
        decode_request(b'{"inputs": [', None, "m", None)


@pytest.mark.parametrize("body", [[], "text", 3, None])
def test_decode_non_object_body(body: Any) -> None:
    with pytest.raises(InvalidRequest, match="must be a JSON object"):
        _decode(body)


@pytest.mark.parametrize("body", [{}, {"inputs": []}, {"inputs": {"name": "x"}}])
def test_decode_missing_or_empty_inputs(body: Any) -> None:
    with pytest.raises(InvalidRequest, match="'inputs' must be a non-empty list"):
        _decode(body)


def test_decode_input_without_data() -> None:
    with pytest.raises(InvalidRequest, match="input 'x' has neither 'data' nor binary_data_size"):
        _decode({"inputs": [_input()]})


def test_decode_unknown_datatype() -> None:
    with pytest.raises(InvalidRequest, match="input 'x': datatype 'FLOAT' is not one of"):
        _decode({"inputs": [_input(datatype="FLOAT", data=[1, 2])]})


@pytest.mark.parametrize("shape", [[-1, 2], [2.0], "2", [True]])
def test_decode_bad_shape(shape: Any) -> None:
    with pytest.raises(InvalidRequest, match="input 'x': 'shape' must be a list of non-negative integers"):
        _decode({"inputs": [_input(shape=shape, data=[1, 2])]})


def test_decode_wrong_data_length_names_the_input() -> None:
    with pytest.raises(InvalidRequest, match=r"input 'x': 3 data elements do not match shape \[2, 2\]"):
        _decode({"inputs": [_input(shape=[2, 2], data=[1, 2, 3])]})


def test_decode_ragged_nested_data() -> None:
    with pytest.raises(InvalidRequest, match="input 'x': data is not a regular array"):
        _decode({"inputs": [_input(shape=[2, 2], data=[[1, 2], [3]])]})


@pytest.mark.parametrize("data", [["a", "b"], [1, "b"]])
def test_decode_strings_into_fp32(data: list[Any]) -> None:
    with pytest.raises(InvalidRequest, match="input 'x': data elements are not valid FP32 values"):
        _decode({"inputs": [_input(data=data)]})


def test_decode_floats_into_int32() -> None:
    with pytest.raises(InvalidRequest, match="input 'x': data elements are not valid INT32 values"):
        _decode({"inputs": [_input(datatype="INT32", data=[1.5, 2])]})


@pytest.mark.parametrize("data", [[256, 0], [-1, 0]])
def test_decode_out_of_range_into_uint8(data: list[int]) -> None:
    with pytest.raises(InvalidRequest, match="input 'x': data is out of range for UINT8"):
        _decode({"inputs": [_input(datatype="UINT8", data=data)]})


def test_decode_uint8_range_edges_are_accepted() -> None:
    request = _decode({"inputs": [_input(datatype="UINT8", data=[0, 255])]})
    assert request.inputs[0].data.dtype == np.uint8
    assert request.inputs[0].data.tolist() == [0, 255]


def test_decode_ints_into_fp32() -> None:
    request = _decode({"inputs": [_input(data=[1, 2])]})
    assert request.inputs[0].data.dtype == np.float32


def test_decode_bool() -> None:
    request = _decode({"inputs": [_input(datatype="BOOL", data=[True, False])]})
    assert request.inputs[0].data.dtype == np.bool_
    assert request.inputs[0].data.tolist() == [True, False]


def test_decode_ints_into_bool_are_rejected() -> None:
    with pytest.raises(InvalidRequest, match="not valid BOOL values"):
        _decode({"inputs": [_input(datatype="BOOL", data=[1, 0])]})


def test_decode_bytes_from_strings() -> None:
    request = _decode({"inputs": [_input(datatype="BYTES", shape=[1, 3], data=[["hello", "", "é"]])]})
    data = request.inputs[0].data
    assert data.dtype == np.dtype(object)
    assert data.shape == (1, 3)
    assert data.tolist() == [[b"hello", b"", "é".encode()]]


def test_decode_bytes_from_numbers_is_rejected() -> None:
    with pytest.raises(InvalidRequest, match="input 'x': BYTES data elements must be strings"):
        _decode({"inputs": [_input(datatype="BYTES", data=[1, 2])]})


def test_decode_scalar_data_for_a_one_element_tensor() -> None:
    request = _decode({"inputs": [_input(shape=[1], data=3.5)]})
    assert request.inputs[0].data.tolist() == [3.5]


def test_decode_empty_tensor() -> None:
    request = _decode({"inputs": [_input(shape=[0, 4], data=[])]})
    assert request.inputs[0].data.shape == (0, 4)


# --- decode_request: numbers read off simdjson's tape ------------------------------------------------------------


@pytest.mark.parametrize(("datatype", "data"), [
    ("FP32", [0.1, 1, -2.5, 3.4028234663852886e38, 1e-45]),
    ("FP64", [0.1, 1, -2.5, 1.7976931348623157e308, 5e-324]),
    ("FP16", [0.1, 1, -2.5, 65504.0, 6e-8]),
    ("INT64", [-9223372036854775808, 0, 9223372036854775807, 1, -1]),
    ("UINT64", [0, 18446744073709551615, 9223372036854775808, 1, 2]),
    ("INT8", [-128, 127, 0, 1, -1]),
    ("UINT32", [0, 4294967295, 1, 2, 3]),
])
def test_tape_numbers_are_exactly_the_values_numpy_makes(datatype: str, data: list[Any]) -> None:
    """The fast path rounds as numpy does from Python floats (through float64), and keeps every
    integer exact (numpy's general path would read a list holding 2**64 - 1 as float64)."""
    (tensor,) = _decode({"inputs": [_input(datatype=datatype, shape=[1, 5], data=data)]}).inputs
    dtype = tensor.data.dtype
    expected = (np.array(data, dtype=np.float64).astype(dtype) if dtype.kind == "f"
                else np.array(data, dtype=dtype)).reshape(1, 5)
    assert tensor.data.dtype == expected.dtype and tensor.data.tobytes() == expected.tobytes()


@pytest.mark.parametrize("datatype", ["UINT64", "INT64"])
def test_nested_integers_past_2_53_stay_exact(datatype: str) -> None:
    """Nested lists take the general path, where numpy would read them through float64."""
    big = 2**64 - 1 if datatype == "UINT64" else 2**63 - 1
    data = [[big, 2**53 + 1], [1, 2]]
    if datatype == "UINT64":
        data[1][0] = 2**63  # the value that makes numpy promote a list of Python ints to float64
    (tensor,) = _decode({"inputs": [_input(datatype=datatype, shape=[2, 2], data=data)]}).inputs
    assert tensor.data.tolist() == data


@pytest.mark.parametrize(("data", "error"), [
    ([[2**63, 1.5], [1, 2]], "data elements are not valid UINT64 values"),
    ([[2**63, -1], [1, 2]], "data is out of range for UINT64"),
])
def test_nested_integers_past_int64_are_checked(data: list[Any], error: str) -> None:
    with pytest.raises(InvalidRequest, match=error):
        _decode({"inputs": [_input(datatype="UINT64", shape=[2, 2], data=data)]})


def test_tape_numbers_unwrap_single_element_lists() -> None:
    (tensor,) = _decode({"inputs": [_input(shape=[1, 1, 3], data=[[[1.5, 2, 3]]])]}).inputs
    assert tensor.data.shape == (1, 1, 3) and tensor.data.tolist() == [[[1.5, 2, 3]]]


def test_a_mix_of_lists_and_numbers_that_adds_up_is_read_in_order() -> None:
    """Only the fast path takes this (numpy calls it inhomogeneous): a top level of ``count``
    elements that flattens to ``count`` numbers, read in order, as Triton reads nested data."""
    (tensor,) = _decode({"inputs": [_input(shape=[2], data=[[1], 2])]}).inputs
    assert tensor.data.tolist() == [1, 2]


def test_a_mix_that_does_not_add_up_is_still_ragged() -> None:
    with pytest.raises(InvalidRequest, match="input 'x': data is not a regular array"):
        _decode({"inputs": [_input(shape=[2], data=[[1, 2], 3])]})


def test_an_integer_past_64_bits_is_malformed_json() -> None:
    with pytest.raises(InvalidRequest, match="malformed JSON in request body: BIGINT_ERROR"):
        decode_request(b'{"inputs": [{"name": "x", "datatype": "FP64", "shape": [1], "data": [1' + b"0" * 30 + b']}]}',
                       None, "m", None)


def test_a_repeated_key_takes_its_first_value() -> None:
    header = (b'{"id": "first", "id": "second",'
              b' "inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1]}]}')
    assert decode_request(header, None, "m", None).id == "first"


# --- decode_request: the binary extension --------------------------------------------------------------------


def test_decode_binary_input() -> None:
    raw = struct.pack("<2f", 1.5, -2.0)
    request = _decode({"inputs": [_input(parameters={"binary_data_size": 8})]}, raw)
    assert request.inputs[0].data.tolist() == [1.5, -2.0]
    assert request.inputs[0].parameters == {}


def test_decode_binary_inputs_are_sliced_in_input_order() -> None:
    a = struct.pack("<3i", 1, 2, 3)
    b = struct.pack("<2d", 0.25, 0.5)
    c = struct.pack("<I", 2) + b"\xff\x00"
    request = _decode({"inputs": [
        _input("a", "INT32", [3], parameters={"binary_data_size": len(a)}),
        _input("j", "FP32", [1], data=[9]),
        _input("b", "FP64", [2], parameters={"binary_data_size": len(b)}),
        _input("c", "BYTES", [1], parameters={"binary_data_size": len(c)}),
    ]}, a + b + c)
    tensors = {t.name: t.data.tolist() for t in request.inputs}
    assert tensors == {"a": [1, 2, 3], "j": [9.0], "b": [0.25, 0.5], "c": [b"\xff\x00"]}
    assert [t.name for t in request.inputs] == ["a", "j", "b", "c"]


def test_decode_binary_input_is_a_view_of_the_body() -> None:
    body = bytearray(struct.pack("<2f", 1.0, 2.0))
    request = decode_request(orjson.dumps({"inputs": [_input(parameters={"binary_data_size": 8})]}),
                             memoryview(body), "m", None)
    assert np.shares_memory(request.inputs[0].data, np.frombuffer(body, dtype=np.uint8))


def test_decode_binary_fp16_and_bf16() -> None:
    fp16 = np.array([0.5, 1.5], dtype=np.float16).tobytes()
    bf16 = b"\x80\x3f\x00\x40"
    request = _decode({"inputs": [_input("h", "FP16", parameters={"binary_data_size": 4}),
                                  _input("b", "BF16", parameters={"binary_data_size": 4})]}, fp16 + bf16)
    assert request.inputs[0].data.tolist() == [0.5, 1.5]
    assert request.inputs[1].data.dtype == np.dtype(ml_dtypes.bfloat16)
    assert request.inputs[1].data.astype(np.float32).tolist() == [1.0, 2.0]


def test_decode_leftover_binary_bytes() -> None:
    with pytest.raises(InvalidRequest, match="binary data is 12 bytes but the inputs' binary_data_size add up to 8"):
        _decode({"inputs": [_input(parameters={"binary_data_size": 8})]}, b"\x00" * 12)


def test_decode_binary_without_any_binary_input_is_leftover() -> None:
    with pytest.raises(InvalidRequest, match="add up to 0"):
        _decode({"inputs": [_input(data=[1, 2])]}, b"\x00" * 4)


def test_decode_binary_size_past_the_end() -> None:
    with pytest.raises(InvalidRequest,
                       match=r"input 'y': binary_data_size 8 runs past the end of the body \(4 bytes left\)"):
        _decode({"inputs": [_input("x", "INT32", [1], parameters={"binary_data_size": 4}),
                            _input("y", parameters={"binary_data_size": 8})]}, b"\x00" * 8)


def test_decode_binary_size_that_does_not_fit_the_shape() -> None:
    with pytest.raises(InvalidRequest, match="input 'x': 4 bytes of data do not match shape"):
        _decode({"inputs": [_input(parameters={"binary_data_size": 4})]}, b"\x00" * 4)


def test_decode_both_data_and_binary_data_size() -> None:
    with pytest.raises(InvalidRequest, match="input 'x' has both 'data' and binary_data_size"):
        _decode({"inputs": [_input(data=[1, 2], parameters={"binary_data_size": 8})]}, b"\x00" * 8)


@pytest.mark.parametrize("size", [-1, 1.5, True, "8"])
def test_decode_bad_binary_data_size(size: Any) -> None:
    with pytest.raises(InvalidRequest, match="binary_data_size must be a non-negative integer"):
        _decode({"inputs": [_input(parameters={"binary_data_size": size})]}, b"\x00" * 8)


def test_decode_parameters_must_be_scalars() -> None:
    with pytest.raises(InvalidRequest, match="'parameters' must map names to strings, numbers or booleans"):
        _decode({"parameters": {"x": [1]}, "inputs": [_input(data=[1, 2])]})


# --- encode_response -----------------------------------------------------------------------------------------


def test_encode_json_response() -> None:
    body, header_length = encode_response(
        _response(InferOutput("y", "FP32", np.array([[1.5, 2.0]], dtype=np.float32)), id="req-1"), set())
    assert header_length is None
    document = orjson.loads(body)
    assert document == {"model_name": "m", "model_version": "1", "id": "req-1",
                        "outputs": [{"name": "y", "datatype": "FP32", "shape": [1, 2], "data": [1.5, 2.0]}]}


def test_encode_without_id_leaves_it_out() -> None:
    body, _ = encode_response(_response(InferOutput("y", "INT32", np.array([1], dtype=np.int32))), set())
    assert "id" not in orjson.loads(body)


def test_encode_response_parameters() -> None:
    body, _ = encode_response(
        _response(InferOutput("y", "INT32", np.array([1], dtype=np.int32)), parameters={"a": 1, "b": "x"}), set())
    assert orjson.loads(body)["parameters"] == {"a": 1, "b": "x"}


def test_encode_flat_data_from_a_multidimensional_output() -> None:
    body, _ = encode_response(_response(InferOutput("y", "INT64", np.arange(6).reshape(2, 3))), set())
    (output,) = orjson.loads(body)["outputs"]
    assert output["shape"] == [2, 3]
    assert output["data"] == [0, 1, 2, 3, 4, 5]


def test_encode_bf16_and_fp16_as_numbers() -> None:
    outputs = (InferOutput("b", "BF16", np.array([1.5, -2.0], dtype=ml_dtypes.bfloat16)),
               InferOutput("h", "FP16", np.array([0.25, 3.0], dtype=np.float16)))
    body, _ = encode_response(_response(*outputs), set())
    data = {o["name"]: o["data"] for o in orjson.loads(body)["outputs"]}
    assert data == {"b": [1.5, -2.0], "h": [0.25, 3.0]}


def test_encode_bool_as_json_booleans() -> None:
    body, _ = encode_response(_response(InferOutput("y", "BOOL", np.array([True, False]))), set())
    assert orjson.loads(body)["outputs"][0]["data"] == [True, False]


def test_encode_bytes_as_strings() -> None:
    data = np.array([b"abc", b"", "é".encode()], dtype=object)
    body, _ = encode_response(_response(InferOutput("y", "BYTES", data)), set())
    assert orjson.loads(body)["outputs"][0]["data"] == ["abc", "", "é"]


def test_encode_non_utf8_bytes_in_json_names_binary_data() -> None:
    data = np.array([b"\xff\xfe"], dtype=object)
    with pytest.raises(InvalidRequest, match=r"output 'y' holds bytes that are not UTF-8.*binary_data"):
        encode_response(_response(InferOutput("y", "BYTES", data)), set())


def test_encode_binary_output() -> None:
    array = np.array([[1.5, 2.0, -3.0]], dtype=np.float32)
    body, header_length = encode_response(_response(InferOutput("y", "FP32", array)), {"y"})
    assert header_length is not None
    document = orjson.loads(body[:header_length])
    (output,) = document["outputs"]
    assert output == {"name": "y", "datatype": "FP32", "shape": [1, 3], "parameters": {"binary_data_size": 12}}
    assert body[header_length:] == array.tobytes()


def test_encode_mixed_binary_and_json_outputs_in_order() -> None:
    a = np.array([1, 2], dtype=np.int32)
    b = np.array([True])
    c = np.array([b"\xff", b"ok"], dtype=object)
    body, header_length = encode_response(
        _response(InferOutput("a", "INT32", a), InferOutput("b", "BOOL", b), InferOutput("c", "BYTES", c)),
        {"a", "c"})
    assert header_length is not None
    outputs = orjson.loads(body[:header_length])["outputs"]
    assert outputs[0]["parameters"] == {"binary_data_size": 8}
    assert outputs[1]["data"] == [True]
    c_raw = b"\x01\x00\x00\x00\xff\x02\x00\x00\x00ok"
    assert outputs[2]["parameters"] == {"binary_data_size": len(c_raw)}
    assert body[header_length:] == a.tobytes() + c_raw


def test_encode_binary_bf16_output() -> None:
    array = np.array([1.0, 2.0], dtype=ml_dtypes.bfloat16)
    body, header_length = encode_response(_response(InferOutput("y", "BF16", array)), {"y"})
    assert body[header_length:] == b"\x80\x3f\x00\x40"


# --- binary_output_names -------------------------------------------------------------------------------------


def _request(parameters: dict[str, Any] | None = None, outputs: list[RequestedOutput] | None = None) -> InferRequest:
    return InferRequest("m", None, [], parameters=parameters or {}, outputs=outputs)


def test_binary_outputs_default_is_none() -> None:
    assert binary_output_names(_request(), ["a", "b"]) == set()


def test_binary_data_output_makes_every_output_binary() -> None:
    assert binary_output_names(_request({"binary_data_output": True}), ["a", "b"]) == {"a", "b"}


def test_binary_data_output_false_keeps_json() -> None:
    assert binary_output_names(_request({"binary_data_output": False}), ["a", "b"]) == set()


def test_per_output_binary_data_true_overrides_the_default() -> None:
    outputs = [RequestedOutput("a", True), RequestedOutput("b", None)]
    assert binary_output_names(_request(outputs=outputs), ["a", "b"]) == {"a"}


def test_per_output_binary_data_false_overrides_binary_data_output() -> None:
    outputs = [RequestedOutput("a", False), RequestedOutput("b", None)]
    assert binary_output_names(_request({"binary_data_output": True}, outputs), ["a", "b"]) == {"b"}

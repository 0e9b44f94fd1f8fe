"""TF Serving's two wire formats <-> arrays: TensorProto (gRPC) and the REST JSON."""

from __future__ import annotations

import base64

import ml_dtypes
import numpy as np
import pytest

from gateway.contract import TensorSpec
from gateway.protocol.datatypes import datatype_of
from gateway.protocol.errors import InvalidRequest
from gateway.protocol.types import InferOutput
from gateway.tfserving.datatypes import TF_DTYPES
from gateway.tfserving.generated import tf_framework_pb2 as tf_pb
from gateway.tfserving.json_codec import encode_predictions, parse_predict_body, to_array
from gateway.tfserving.tensor_proto import decode_tensor, encode_tensor

ARRAYS = {
    "FP32": np.array([[1.5, -2.0]], np.float32), "FP64": np.array([1e300]), "INT32": np.array([-(2**31)], np.int32),
    "UINT8": np.array([255], np.uint8), "INT16": np.array([-300], np.int16), "INT8": np.array([-128], np.int8),
    "INT64": np.array([2**62], np.int64), "BOOL": np.array([True, False]), "UINT16": np.array([65535], np.uint16),
    "FP16": np.array([0.5], np.float16), "BF16": np.array([1.5], ml_dtypes.bfloat16),
    "UINT32": np.array([2**32 - 1], np.uint32), "UINT64": np.array([2**64 - 1], np.uint64),
    "BYTES": np.array([[b"a", b"\xff"]], dtype=object),
}


@pytest.mark.parametrize("datatype", sorted(TF_DTYPES))
def test_tensor_proto_round_trip(datatype: str) -> None:
    array = ARRAYS[datatype]
    proto = encode_tensor(array, datatype)
    assert proto.dtype == TF_DTYPES[datatype][1]
    assert bool(proto.tensor_content) == (datatype != "BYTES")  # numbers as TF Serving answers them
    decoded = decode_tensor(tf_pb.TensorProto.FromString(proto.SerializeToString()), "x")
    assert datatype_of(decoded.dtype) == datatype and decoded.shape == array.shape
    np.testing.assert_array_equal(decoded, array)


def _typed(dtype: int, shape: list[int], **values: object) -> tf_pb.TensorProto:
    proto = tf_pb.TensorProto(dtype=dtype, **values)  # type: ignore[arg-type]
    proto.tensor_shape.dim.extend(tf_pb.TensorShapeProto.Dim(size=d) for d in shape)
    return proto


def test_typed_value_fields() -> None:
    assert decode_tensor(_typed(tf_pb.DT_INT8, [2], int_val=[-1, 5]), "x").tolist() == [-1, 5]
    assert decode_tensor(_typed(tf_pb.DT_UINT64, [1], uint64_val=[2**64 - 1]), "x").tolist() == [2**64 - 1]
    halves = np.array([1.5, -2.0], np.float16)
    decoded = decode_tensor(_typed(tf_pb.DT_HALF, [2], half_val=halves.view(np.uint16).tolist()), "x")
    np.testing.assert_array_equal(decoded, halves)
    filled = decode_tensor(_typed(tf_pb.DT_FLOAT, [2, 3], float_val=[0.25]), "x")
    assert filled.shape == (2, 3) and (filled == 0.25).all()  # one value fills the shape, as in TensorFlow


@pytest.mark.parametrize(("proto", "message"), [
    (_typed(tf_pb.DT_FLOAT, [3], float_val=[1.0, 2.0]), "2 elements in float_val do not fill tensor_shape [3]"),
    (_typed(tf_pb.DT_FLOAT, [2], int_val=[1, 2]), "DT_FLOAT elements belong in float_val, not int_val"),
    (_typed(tf_pb.DT_INT8, [1], int_val=[300]), "out of range for DT_INT8"),
    (_typed(tf_pb.DT_STRING, [1], tensor_content=b"abc"), "DT_STRING elements go in string_val"),
    (_typed(tf_pb.DT_FLOAT, [2], tensor_content=b"abc"), "3 bytes of data do not match shape [2]"),
    (_typed(tf_pb.DT_COMPLEX64, [1]), "dtype 8 is not one TensorGate serves"),
    (_typed(tf_pb.DT_FLOAT, [-1]), "negative dimension"),
])
def test_bad_tensor_protos_name_the_input(proto: tf_pb.TensorProto, message: str) -> None:
    with pytest.raises(InvalidRequest, match="input 'x'") as caught:
        decode_tensor(proto, "x")
    assert message in caught.value.message


def test_row_and_columnar_bodies() -> None:
    rows = parse_predict_body(b'{"instances": [{"a": 1, "b": [2]}, {"a": 3, "b": [4]}]}')
    assert rows.row_format and rows.values == {"a": [1, 3], "b": [[2], [4]]}
    bare = parse_predict_body(b'{"signature_name": "serving_default", "instances": [[1, 2]]}')
    assert bare.values == {None: [[1, 2]]} and bare.signature_name == "serving_default"
    assert parse_predict_body(b'{"inputs": {"b64": "YQ=="}}').values == {None: {"b64": "YQ=="}}
    assert parse_predict_body(b'{"inputs": {"a": [1]}}').values == {"a": [1]}
    assert np.isnan(parse_predict_body(b'{"inputs": [NaN]}').values[None][0])


@pytest.mark.parametrize(("body", "message"), [
    (b'{"instances": [1], "inputs": [1]}', "not both"),
    (b'{"instances": []}', "non-empty list"),
    (b'{"instances": [{"a": 1}, 2]}', "mixes objects"),
    (b'{"inputs": {}}', "empty object"),
    (b'{"inputs": [1], "signature": "x"}', "unknown field(s) signature"),
    (b'{"inputs": [1], "signature_name": 3}', "'signature_name' must be a string"),
    (b"[1]", "must be a JSON object"),
])
def test_bad_bodies(body: bytes, message: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        parse_predict_body(body)
    assert message in caught.value.message


def test_json_values_take_the_model_datatype() -> None:
    assert to_array([[1, 2]], TensorSpec("x", "FP16", (-1,)), "x").dtype == np.float16
    strings = to_array(["a", {"b64": base64.b64encode(b"\xff").decode()}], TensorSpec("s", "BYTES", (-1,)), "s")
    assert strings.tolist() == [b"a", b"\xff"]
    web_safe = to_array([{"b64": base64.urlsafe_b64encode(b"\xfb\xff").decode()}], TensorSpec("s", "BYTES", (-1,)), "s")
    assert web_safe.tolist() == [b"\xfb\xff"]
    for value, spec, message in [
        ([1.5], TensorSpec("x", "INT32", (-1,)), "not valid INT32 values"),
        ([300], TensorSpec("x", "UINT8", (-1,)), "out of range for UINT8"),
        ([[1], [1, 2]], TensorSpec("x", "FP32", (-1, -1)), "is ragged"),
        ([["a"], ["a", "b"]], TensorSpec("s", "BYTES", (-1, -1)), "is ragged"),
        ([{"b64": 5}], TensorSpec("s", "BYTES", (-1,)), "is not valid base64"),
        ([1], TensorSpec("s", "BYTES", (-1,)), "not int"),
    ]:
        with pytest.raises(InvalidRequest) as caught:
            to_array(value, spec, "where")
        assert message in caught.value.message and caught.value.message.startswith("where")


def test_replies_are_shaped_as_tf_serving_shapes_them() -> None:
    y = InferOutput("y", "FP32", np.array([[1.0], [2.0]], np.float32))
    z = InferOutput("z_bytes", "BYTES", np.array([b"a", b"b"], dtype=object))
    assert encode_predictions([y], True) == b'{"predictions":[[1.0],[2.0]]}'
    assert encode_predictions([y], False) == b'{"outputs":[[1.0],[2.0]]}'
    assert encode_predictions([y, z], True) == (b'{"predictions":[{"y":[1.0],"z_bytes":{"b64":"YQ=="}},'
                                                b'{"y":[2.0],"z_bytes":{"b64":"Yg=="}}]}')
    assert encode_predictions([y, z], False) == (b'{"outputs":{"y":[[1.0],[2.0]],'
                                                 b'"z_bytes":[{"b64":"YQ=="},{"b64":"Yg=="}]}}')
    scalar = InferOutput("s", "FP32", np.array(3.0, np.float32))
    with pytest.raises(InvalidRequest, match="columnar format"):
        encode_predictions([y, scalar], True)
    assert encode_predictions([InferOutput("n", "FP64", np.array([np.nan, -np.inf]))], False) == \
        b'{"outputs": [NaN, -Infinity]}'

"""Checks with TF Serving's own client stubs (``tensorflow-serving-api``), run in their own process.

The stubs and TensorGate's generated TF Serving modules both register ``tensorflow.*`` in
protobuf's default pool, so this script must never import ``gateway``. Usage:
``python tfserving_grpc_checks.py HOST:PORT SUITE`` (SUITE: ``shared`` for the shared test
server's models, ``layout`` for a TF Serving model folder served as it is) prints one JSON
object mapping each check to "ok" or the failure, and exits 0.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from collections.abc import Callable

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import grpc
import numpy as np
import tensorflow as tf
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

Stubs = tuple[prediction_service_pb2_grpc.PredictionServiceStub, model_service_pb2_grpc.ModelServiceStub]
SUITES: dict[str, dict[str, Callable[[Stubs], None]]] = {"shared": {}, "layout": {}}
DIGITS = ["digits_onnx", "digits_torchscript", "digits_torch_export", "digits_torch_aoti", "digits_savedmodel",
          "digits_jax"]


def check(suite: str) -> Callable[[Callable[[Stubs], None]], Callable[[Stubs], None]]:
    def register(fn: Callable[[Stubs], None]) -> Callable[[Stubs], None]:
        SUITES[suite][fn.__name__] = fn
        return fn
    return register


def request(model: str, inputs: dict[str, object], version: int | None = None, label: str = "",
            signature: str = "") -> predict_pb2.PredictRequest:
    message = predict_pb2.PredictRequest()
    message.model_spec.name = model
    message.model_spec.signature_name = signature
    if version is not None:
        message.model_spec.version.value = version
    if label:
        message.model_spec.version_label = label
    for name, value in inputs.items():
        tensor = value if isinstance(value, tensor_pb2.TensorProto) else tf.make_tensor_proto(value)
        message.inputs[name].CopyFrom(tensor)
    return message


def expect_error(call: Callable[[], object], code: grpc.StatusCode, text: str) -> None:
    try:
        call()
    except grpc.RpcError as exc:
        assert exc.code() == code, (exc.code(), exc.details())
        assert text in (exc.details() or ""), exc.details()
        return
    raise AssertionError(f"expected {code}")


def digits() -> np.ndarray:
    return np.random.default_rng(1).random((3, 64), dtype=np.float32)


@check("shared")
def predict_in_every_runtime(stubs: Stubs) -> None:
    answers = []
    for model in DIGITS:
        reply = stubs[0].Predict(request(model, {"input": digits()}), timeout=60)
        assert reply.model_spec.name == model and reply.model_spec.version.value == 1, reply.model_spec
        assert reply.model_spec.signature_name == "serving_default"
        logits = reply.outputs["logits"]
        assert logits.tensor_content and logits.dtype == types_pb2.DT_FLOAT  # TF Serving's form of numbers
        answers.append(tf.make_ndarray(logits))
    for model, answer in zip(DIGITS, answers, strict=True):
        assert answer.shape == (3, 10), answer.shape
        np.testing.assert_allclose(answer, answers[0], rtol=1e-5, atol=1e-5, err_msg=model)


@check("shared")
def typed_values_and_one_value_filling_a_shape(stubs: Stubs) -> None:
    x = digits()
    shape = tensor_shape_pb2.TensorShapeProto(dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=d) for d in x.shape])
    typed = tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, tensor_shape=shape, float_val=x.ravel().tolist())
    filled = tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, tensor_shape=shape, float_val=[0.5])
    content = tf.make_ndarray(stubs[0].Predict(request("digits_onnx", {"input": x})).outputs["logits"])
    by_value = tf.make_ndarray(stubs[0].Predict(request("digits_onnx", {"input": typed})).outputs["logits"])
    np.testing.assert_array_equal(by_value, content)
    halves = tf.make_ndarray(stubs[0].Predict(request("digits_onnx", {"input": np.full(x.shape, 0.5, np.float32)}))
                             .outputs["logits"])
    np.testing.assert_array_equal(tf.make_ndarray(stubs[0].Predict(request("digits_onnx", {"input": filled}))
                                                  .outputs["logits"]), halves)


@check("shared")
def every_datatype_round_trips(stubs: Stubs) -> None:
    rng = np.random.default_rng(2)
    arrays: dict[str, np.ndarray] = {
        "fp32": rng.standard_normal((2, 3)).astype(np.float32),
        "int64": rng.integers(-(2**62), 2**62, (2, 2), dtype=np.int64),
        "bytes": np.array([[b"alpha", "ünïcode".encode()], [b"", b"z" * 300]], dtype=object),
        "bool": np.array([[True, False, True]] * 2),
        "fp16": rng.standard_normal((2, 4)).astype(np.float16),
    }
    reply = stubs[0].Predict(request("identity", {f"in_{k}": v for k, v in arrays.items()}))
    assert sorted(reply.outputs) == sorted(f"out_{k}" for k in arrays)
    assert reply.outputs["out_bytes"].string_val and not reply.outputs["out_bytes"].tensor_content
    for key, array in arrays.items():
        np.testing.assert_array_equal(tf.make_ndarray(reply.outputs[f"out_{key}"]), array, err_msg=key)
    # DT_HALF in half_val (each element's 16 bits in an int32), as TensorFlow writes it without tensor_content.
    halves = np.array([[1.5, -2.0]], dtype=np.float16)
    typed = tensor_pb2.TensorProto(dtype=types_pb2.DT_HALF, half_val=halves.view(np.uint16).ravel().tolist(),
                                   tensor_shape=tf.make_tensor_proto(halves).tensor_shape)
    inputs: dict[str, object] = {f"in_{k}": v[:1] for k, v in arrays.items()}
    inputs["in_fp16"] = typed
    answer = stubs[0].Predict(request("identity", inputs)).outputs["out_fp16"]
    np.testing.assert_array_equal(tf.make_ndarray(answer), halves)


@check("shared")
def output_filter(stubs: Stubs) -> None:
    arrays = {"in_fp32": np.ones((1, 2), np.float32), "in_int64": np.ones((1, 2), np.int64),
              "in_bytes": np.array([[b"a"]], dtype=object), "in_bool": np.ones((1, 1), bool),
              "in_fp16": np.ones((1, 1), np.float16)}
    message = request("identity", arrays)
    message.output_filter.append("out_int64")
    assert list(stubs[0].Predict(message).outputs) == ["out_int64"]
    message.output_filter.append("scores")
    expect_error(lambda: stubs[0].Predict(message), grpc.StatusCode.INVALID_ARGUMENT, "has no output 'scores'")


@check("shared")
def versions(stubs: Stubs) -> None:
    x = np.zeros((1, 4), np.float32)
    pinned = stubs[0].Predict(request("versioned", {"x": x}, version=1))
    assert pinned.model_spec.version.value == 1 and tf.make_ndarray(pinned.outputs["y"]).tolist() == [[1.0] * 4]
    latest = stubs[0].Predict(request("versioned", {"x": x}))
    assert latest.model_spec.version.value == 2 and tf.make_ndarray(latest.outputs["y"]).tolist() == [[2.0] * 4]


@check("shared")
def metadata(stubs: Stubs) -> None:
    message = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    message.model_spec.name = "digits_onnx"
    reply = stubs[0].GetModelMetadata(message)
    assert reply.model_spec.name == "digits_onnx" and reply.model_spec.version.value == 1
    signatures = get_model_metadata_pb2.SignatureDefMap()
    assert reply.metadata["signature_def"].Unpack(signatures)
    signature = signatures.signature_def["serving_default"]
    assert signature.method_name == "tensorflow/serving/predict"
    assert signature.inputs["input"].dtype == types_pb2.DT_FLOAT
    assert [d.size for d in signature.inputs["input"].tensor_shape.dim] == [-1, 64]
    assert [d.size for d in signature.outputs["logits"].tensor_shape.dim] == [-1, 10]
    del message.metadata_field[:]
    expect_error(lambda: stubs[0].GetModelMetadata(message), grpc.StatusCode.INVALID_ARGUMENT, "metadata_field")
    message.metadata_field.append("graph_def")
    expect_error(lambda: stubs[0].GetModelMetadata(message), grpc.StatusCode.INVALID_ARGUMENT,
                 "Metadata field graph_def is not supported")


@check("shared")
def model_status(stubs: Stubs) -> None:
    message = get_model_status_pb2.GetModelStatusRequest()
    message.model_spec.name = "versioned"
    reply = stubs[1].GetModelStatus(message)
    available = get_model_status_pb2.ModelVersionStatus.AVAILABLE
    assert [(s.version, s.state, s.status.error_code) for s in reply.model_version_status] == [
        (1, available, 0), (2, available, 0)]
    message.model_spec.version.value = 2
    assert [s.version for s in stubs[1].GetModelStatus(message).model_version_status] == [2]
    message.model_spec.version.value = 9
    expect_error(lambda: stubs[1].GetModelStatus(message), grpc.StatusCode.NOT_FOUND, "no version '9'")
    message.model_spec.version_label = "stable"
    expect_error(lambda: stubs[1].GetModelStatus(message), grpc.StatusCode.INVALID_ARGUMENT,
                 "Unrecognized servable version label: stable")


@check("shared")
def errors_carry_status_codes(stubs: Stubs) -> None:
    predict = stubs[0].Predict
    x = digits()
    invalid, not_found = grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND
    expect_error(lambda: predict(request("half", {"input": x})), not_found, "unknown model 'half'")
    expect_error(lambda: predict(request("digits_onnx", {"input": x}, version=5)), not_found, "no version '5'")
    expect_error(lambda: predict(request("digits_onnx", {"input": x}, label="canary")), invalid,
                 "Unrecognized servable version label: canary")
    expect_error(lambda: predict(request("digits_onnx", {"input": x}, signature="classify")), invalid,
                 "signature_name 'classify'")
    expect_error(lambda: predict(request("digits_onnx", {"pixels": x})), invalid, "has no input 'pixels'")
    expect_error(lambda: predict(request("digits_onnx", {"input": x[:, :60]})), invalid, "shape [3, 60]")
    expect_error(lambda: predict(request("digits_onnx", {"input": x.astype(np.float64)})), invalid,
                 "datatype FP64 does not match the model's FP32")
    strings = tensor_pb2.TensorProto(dtype=types_pb2.DT_STRING, tensor_content=b"abc",
                                     tensor_shape=tf.make_tensor_proto(np.zeros(3)).tensor_shape)
    expect_error(lambda: predict(request("identity", {"in_bytes": strings})), invalid, "not tensor_content")
    short = tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, float_val=[1.0, 2.0],
                                   tensor_shape=tf.make_tensor_proto(x).tensor_shape)
    expect_error(lambda: predict(request("digits_onnx", {"input": short})), invalid,
                 "2 elements in float_val do not fill tensor_shape [3, 64]")
    classify = classification_pb2.ClassificationRequest()
    classify.model_spec.name = "digits_onnx"
    expect_error(lambda: stubs[0].Classify(classify), grpc.StatusCode.UNIMPLEMENTED, "")


@check("layout")
def half_plus_three(stubs: Stubs) -> None:
    reply = stubs[0].Predict(request("half_plus_three", {"x": np.array([1.0, 2.0, 5.0], np.float32)}))
    assert reply.model_spec.version.value == 123
    assert tf.make_ndarray(reply.outputs["y"]).tolist() == [3.5, 4.0, 5.5]
    status = get_model_status_pb2.GetModelStatusRequest()
    status.model_spec.name = "half_plus_three"
    states = [(s.version, s.state) for s in stubs[1].GetModelStatus(status).model_version_status]
    assert states == [(123, get_model_status_pb2.ModelVersionStatus.AVAILABLE)], states
    message = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    message.model_spec.name = "half_plus_three"
    signatures = get_model_metadata_pb2.SignatureDefMap()
    stubs[0].GetModelMetadata(message).metadata["signature_def"].Unpack(signatures)
    x = signatures.signature_def["serving_default"].inputs["x"]
    assert x.dtype == types_pb2.DT_FLOAT and [d.size for d in x.tensor_shape.dim] == [-1]


@check("layout")
def strings_in_a_savedmodel(stubs: Stubs) -> None:
    words = np.array([b"tensor", "gåte".encode(), b"\xff\xfe"], dtype=object)
    reply = stubs[0].Predict(request("string_lengths", {"text": words}, signature="predict_strings"))
    assert reply.model_spec.signature_name == "predict_strings"
    assert tf.make_ndarray(reply.outputs["length"]).tolist() == [6, 5, 2]
    assert tf.make_ndarray(reply.outputs["echo_bytes"]).tolist() == words.tolist()


def main() -> int:
    address, suite = sys.argv[1], sys.argv[2]
    channel = grpc.insecure_channel(address)
    stubs = (prediction_service_pb2_grpc.PredictionServiceStub(channel),
             model_service_pb2_grpc.ModelServiceStub(channel))
    results = {}
    for name, fn in SUITES[suite].items():
        try:
            fn(stubs)
            results[name] = "ok"
        except Exception:
            results[name] = traceback.format_exc()
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())

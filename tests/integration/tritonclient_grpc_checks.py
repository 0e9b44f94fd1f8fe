"""Conformance checks with ``tritonclient.grpc``, run in their own process.

tritonclient.grpc and TensorGate's generated modules both register ``inference.*`` in
protobuf's default pool, so this script must never import ``gateway``. Usage:
``python tritonclient_grpc_checks.py HOST:PORT`` prints one JSON object mapping each
check to "ok" or the failure, and exits 0.
"""

from __future__ import annotations

import json
import sys
import traceback
from collections.abc import Callable

import grpc
import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

CHECKS: dict[str, Callable[[grpcclient.InferenceServerClient, str], None]] = {}


def check(fn: Callable[[grpcclient.InferenceServerClient, str], None]) -> Callable[..., None]:
    CHECKS[fn.__name__] = fn
    return fn


def identity_arrays() -> dict[str, tuple[str, np.ndarray]]:
    rng = np.random.default_rng(5)
    return {
        "fp32": ("FP32", rng.standard_normal((2, 3)).astype(np.float32)),
        "int64": ("INT64", rng.integers(-(2**62), 2**62, (2, 2), dtype=np.int64)),
        "bytes": ("BYTES", np.array([[b"alpha", "ünïcode".encode()], [b"", b"z" * 300]], dtype=object)),
        "bool": ("BOOL", np.array([[True, False, True]] * 2)),
        "fp16": ("FP16", rng.standard_normal((2, 4)).astype(np.float16)),
    }


def expect_error(fn: Callable[[], object], status: str, text: str) -> None:
    try:
        fn()
    except InferenceServerException as exc:
        assert exc.status() == status, (exc.status(), exc.message())
        assert text in (exc.message() or ""), exc.message()
        return
    raise AssertionError(f"expected {status}")


@check
def health(client: grpcclient.InferenceServerClient, address: str) -> None:
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("digits_onnx")
    assert client.is_model_ready("versioned", "1") and client.is_model_ready("versioned", "2")


@check
def server_and_model_metadata(client: grpcclient.InferenceServerClient, address: str) -> None:
    server = client.get_server_metadata(as_json=True)
    assert server["name"] == "tensorgate" and "binary_tensor_data" in server["extensions"]
    model = client.get_model_metadata("digits_onnx", as_json=True)
    assert model["platform"] == "onnxruntime_onnx"
    assert model["inputs"][0] == {"name": "input", "datatype": "FP32", "shape": ["-1", "64"]}
    assert model["versions"] == ["1"]


@check
def model_config(client: grpcclient.InferenceServerClient, address: str) -> None:
    config = client.get_model_config("identity").config
    assert config.max_batch_size == 8
    names = [i.name for i in config.input]
    assert names == ["in_fp32", "in_int64", "in_bytes", "in_bool", "in_fp16"]
    assert config.input[2].data_type == 13  # TYPE_STRING
    assert list(config.input[0].dims) == [-1]


@check
def raw_round_trip_every_datatype(client: grpcclient.InferenceServerClient, address: str) -> None:
    arrays = identity_arrays()
    inputs = []
    for suffix, (datatype, array) in arrays.items():
        tensor = grpcclient.InferInput(f"in_{suffix}", list(array.shape), datatype)
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    result = client.infer("identity", inputs, request_id="grpc-42")
    assert result.get_response().id == "grpc-42"
    assert result.get_response().model_version == "1"
    for suffix, (_, array) in arrays.items():
        got = result.as_numpy(f"out_{suffix}")
        assert got.shape == array.shape, (suffix, got.shape)
        if suffix == "bytes":
            assert got.tolist() == array.tolist()
        else:
            assert got.dtype == array.dtype
            np.testing.assert_array_equal(got, array)


@check
def typed_contents_round_trip(client: grpcclient.InferenceServerClient, address: str) -> None:
    """Typed ``contents`` instead of raw, built with tritonclient's own protobuf classes."""
    with grpc.insecure_channel(address) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        request = service_pb2.ModelInferRequest(model_name="versioned", model_version="1", id="typed")
        request.inputs.add(name="x", datatype="FP32", shape=[1, 4]).contents.fp32_contents.extend([1, 2, 3, 4])
        reply = stub.ModelInfer(request)
        assert reply.id == "typed"
        assert np.frombuffer(reply.raw_output_contents[0], np.float32).tolist() == [2, 3, 4, 5]


@check
def fp16_needs_raw_contents(client: grpcclient.InferenceServerClient, address: str) -> None:
    """FP16 has no typed contents field: a request without raw data is refused with a reason."""
    with grpc.insecure_channel(address) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        request = service_pb2.ModelInferRequest(model_name="identity")
        request.inputs.add(name="in_fp16", datatype="FP16", shape=[1, 1])
        try:
            stub.ModelInfer(request)
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.UNIMPLEMENTED, exc
            assert "raw_input_contents" in (exc.details() or "")
        else:
            raise AssertionError("FP16 in typed contents must be refused")


@check
def requested_output_subset(client: grpcclient.InferenceServerClient, address: str) -> None:
    arrays = identity_arrays()
    inputs = []
    for suffix, (datatype, array) in arrays.items():
        tensor = grpcclient.InferInput(f"in_{suffix}", list(array.shape), datatype)
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    outputs = [grpcclient.InferRequestedOutput("out_int64"), grpcclient.InferRequestedOutput("out_fp16")]
    result = client.infer("identity", inputs, outputs=outputs)
    assert [o.name for o in result.get_response().outputs] == ["out_int64", "out_fp16"]
    assert result.as_numpy("out_fp32") is None


@check
def version_routing(client: grpcclient.InferenceServerClient, address: str) -> None:
    x = grpcclient.InferInput("x", [1, 4], "FP32")
    x.set_data_from_numpy(np.zeros((1, 4), np.float32))
    assert client.infer("versioned", [x], model_version="1").as_numpy("y").tolist() == [[1, 1, 1, 1]]
    assert client.infer("versioned", [x]).as_numpy("y").tolist() == [[2, 2, 2, 2]]


@check
def errors_carry_status_codes(client: grpcclient.InferenceServerClient, address: str) -> None:
    good = grpcclient.InferInput("x", [1, 4], "FP32")
    good.set_data_from_numpy(np.zeros((1, 4), np.float32))
    wrong_shape = grpcclient.InferInput("x", [1, 3], "FP32")
    wrong_shape.set_data_from_numpy(np.zeros((1, 3), np.float32))
    wrong_type = grpcclient.InferInput("x", [1, 4], "INT32")
    wrong_type.set_data_from_numpy(np.zeros((1, 4), np.int32))
    too_big = grpcclient.InferInput("x", [5, 4], "FP32")
    too_big.set_data_from_numpy(np.zeros((5, 4), np.float32))
    expect_error(lambda: client.infer("nope", [good]), "StatusCode.NOT_FOUND", "unknown model")
    expect_error(lambda: client.infer("versioned", [good], model_version="9"), "StatusCode.NOT_FOUND", "no version")
    expect_error(lambda: client.infer("versioned", [wrong_shape]), "StatusCode.INVALID_ARGUMENT", "shape")
    expect_error(lambda: client.infer("versioned", [wrong_type]), "StatusCode.INVALID_ARGUMENT", "datatype INT32")
    expect_error(lambda: client.infer("versioned", [too_big]), "StatusCode.INVALID_ARGUMENT", "max_batch_size 4")
    expect_error(lambda: client.get_model_metadata("nope"), "StatusCode.NOT_FOUND", "unknown model")


@check
def streaming_infer(client: grpcclient.InferenceServerClient, address: str) -> None:
    results: list[object] = []
    client.start_stream(callback=lambda result, error: results.append(error or result))
    for value in (1.0, 2.0):
        x = grpcclient.InferInput("x", [1, 4], "FP32")
        x.set_data_from_numpy(np.full((1, 4), value, np.float32))
        client.async_stream_infer("versioned", [x], request_id=str(value))
    client.stop_stream()
    values = sorted(r.as_numpy("y")[0, 0] for r in results)  # type: ignore[attr-defined]
    assert values == [3.0, 4.0], values


def main(address: str) -> int:
    outcome: dict[str, str] = {}
    for name, fn in CHECKS.items():
        client = grpcclient.InferenceServerClient(url=address)
        try:
            fn(client, address)
            outcome[name] = "ok"
        except Exception:
            outcome[name] = traceback.format_exc()
        finally:
            client.close()
    print(json.dumps(outcome))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))

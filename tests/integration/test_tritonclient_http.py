"""Conformance with Triton's own HTTP client, ``tritonclient.http``, unchanged.

(``tritonclient.grpc`` registers protobuf types that clash with ours, so its checks run in
a separate process: see test_tritonclient_grpc.py.)
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from tests.server import ServerProcess


@pytest.fixture(scope="module")
def triton(server: ServerProcess) -> Iterator[httpclient.InferenceServerClient]:
    client = httpclient.InferenceServerClient(url=f"127.0.0.1:{server.http_port}")
    yield client
    client.close()


def identity_inputs(binary: bool) -> tuple[list[httpclient.InferInput], dict[str, np.ndarray]]:
    rng = np.random.default_rng(3)
    arrays: dict[str, np.ndarray] = {
        "fp32": rng.standard_normal((2, 3)).astype(np.float32),
        "int64": rng.integers(-(2**62), 2**62, (2, 2), dtype=np.int64),
        "bytes": np.array([[b"alpha", "ünïcode".encode()], [b"", b"z" * 300]], dtype=object),
        "bool": np.array([[True, False, True, True]] * 2),
        "fp16": rng.standard_normal((2, 5)).astype(np.float16),
    }
    inputs = []
    for suffix, array in arrays.items():
        datatype = {"fp32": "FP32", "int64": "INT64", "bytes": "BYTES", "bool": "BOOL", "fp16": "FP16"}[suffix]
        tensor = httpclient.InferInput(f"in_{suffix}", list(array.shape), datatype)
        tensor.set_data_from_numpy(array, binary_data=binary or suffix == "fp16")
        inputs.append(tensor)
    return inputs, arrays


def test_health_and_metadata(triton: httpclient.InferenceServerClient) -> None:
    assert triton.is_server_live()
    assert triton.is_server_ready()
    assert triton.is_model_ready("digits_onnx")
    assert triton.is_model_ready("versioned", "1")
    assert not triton.is_model_ready("versioned", "3")
    assert triton.get_server_metadata()["name"] == "tensorgate"
    metadata = triton.get_model_metadata("digits_onnx")
    assert metadata["inputs"][0] == {"name": "input", "datatype": "FP32", "shape": [-1, 64]}
    config = triton.get_model_config("digits_onnx")
    assert config["max_batch_size"] == 64 and config["input"][0]["dims"] == [64]


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_round_trip_every_datatype(triton: httpclient.InferenceServerClient, binary: bool) -> None:
    inputs, arrays = identity_inputs(binary)
    outputs = [httpclient.InferRequestedOutput(f"out_{s}", binary_data=binary) for s in arrays]
    result = triton.infer("identity", inputs, outputs=outputs, request_id="tc-1")
    assert result.get_response()["id"] == "tc-1"
    for suffix, array in arrays.items():
        got = result.as_numpy(f"out_{suffix}")
        assert got.shape == array.shape
        if suffix == "bytes":  # tritonclient gives JSON strings back as str, binary ones as bytes
            assert [e if isinstance(e, bytes) else e.encode() for e in got.ravel()] == array.ravel().tolist()
        else:
            assert got.dtype == array.dtype
            np.testing.assert_array_equal(got, array)


def test_requested_output_subset(triton: httpclient.InferenceServerClient) -> None:
    inputs, arrays = identity_inputs(True)
    result = triton.infer("identity", inputs, outputs=[httpclient.InferRequestedOutput("out_bool")])
    assert [o["name"] for o in result.get_response()["outputs"]] == ["out_bool"]
    np.testing.assert_array_equal(result.as_numpy("out_bool"), arrays["bool"])
    assert result.as_numpy("out_fp32") is None


def test_versions_and_compression(triton: httpclient.InferenceServerClient) -> None:
    x = httpclient.InferInput("x", [1, 4], "FP32")
    x.set_data_from_numpy(np.zeros((1, 4), np.float32))
    assert triton.infer("versioned", [x], model_version="1").as_numpy("y").tolist() == [[1, 1, 1, 1]]
    gz = triton.infer("versioned", [x], request_compression_algorithm="gzip")
    assert gz.as_numpy("y").tolist() == [[2, 2, 2, 2]]


def test_digits_prediction(triton: httpclient.InferenceServerClient) -> None:
    x = httpclient.InferInput("input", [2, 64], "FP32")
    x.set_data_from_numpy(np.zeros((2, 64), np.float32))
    logits = triton.infer("digits_onnx", [x]).as_numpy("logits")
    assert logits.shape == (2, 10) and np.isfinite(logits).all()


def test_errors_reach_the_client(triton: httpclient.InferenceServerClient) -> None:
    x = httpclient.InferInput("x", [1, 3], "FP32")
    x.set_data_from_numpy(np.zeros((1, 3), np.float32))
    with pytest.raises(InferenceServerException, match="does not match the model's") as info:
        triton.infer("versioned", [x])
    assert info.value.status() == "400"
    with pytest.raises(InferenceServerException, match="unknown model"):
        triton.infer("nope", [x])

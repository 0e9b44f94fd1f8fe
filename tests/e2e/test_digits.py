"""The example digits classifier end to end: scikit-learn's whole digits test split through
the server over REST JSON, REST binary and gRPC raw, against the model applied offline.
"""

from __future__ import annotations

import json
from collections.abc import Callable

import grpc
import httpx
import numpy as np

from gateway.grpc.generated import grpc_service_pb2 as pb
from gateway.grpc.generated import grpc_service_pb2_grpc as pb_grpc
from tests.helpers import load_script
from tests.server import ServerProcess

BATCH = 64  # the model's max_batch_size


def _rest_json(url: str, x: np.ndarray) -> np.ndarray:
    body = {"inputs": [{"name": "input", "shape": list(x.shape), "datatype": "FP32", "data": x.tolist()}]}
    r = httpx.post(f"{url}/v2/models/digits_onnx/infer", json=body)
    assert r.status_code == 200, r.text
    output = r.json()["outputs"][0]
    return np.array(output["data"], dtype=np.float32).reshape(output["shape"])


def _rest_binary(url: str, x: np.ndarray) -> np.ndarray:
    header = json.dumps({
        "inputs": [{"name": "input", "shape": list(x.shape), "datatype": "FP32",
                    "parameters": {"binary_data_size": x.nbytes}}],
        "parameters": {"binary_data_output": True},
    }).encode()
    r = httpx.post(f"{url}/v2/models/digits_onnx/infer", content=header + x.tobytes(),
                   headers={"Inference-Header-Content-Length": str(len(header))})
    assert r.status_code == 200, r.text
    length = int(r.headers["inference-header-content-length"])
    return np.frombuffer(r.content[length:], np.float32).reshape(len(x), 10)


def _grpc_raw(stub: pb_grpc.GRPCInferenceServiceStub, x: np.ndarray) -> np.ndarray:
    request = pb.ModelInferRequest(model_name="digits_onnx", raw_input_contents=[x.tobytes()])
    request.inputs.add(name="input", datatype="FP32", shape=list(x.shape))
    reply = stub.ModelInfer(request)
    return np.frombuffer(reply.raw_output_contents[0], np.float32).reshape(len(x), 10)


def test_digits_test_split_over_every_transport(server: ServerProcess) -> None:
    build = load_script("build_model_repo")
    x_test, y_test = build.digits_test_split()
    reference = build.numpy_forward(build.train_digits_mlp(), x_test)
    with grpc.insecure_channel(server.grpc_address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        calls: list[Callable[[np.ndarray], np.ndarray]] = [
            lambda x: _rest_json(server.http_url, x), lambda x: _rest_binary(server.http_url, x),
            lambda x: _grpc_raw(stub, x),
        ]
        for call in calls:
            logits = np.concatenate([call(x_test[i : i + BATCH]) for i in range(0, len(x_test), BATCH)])
            assert logits.shape == (len(x_test), 10)
            assert (logits.argmax(1) == y_test).mean() >= 0.9
            np.testing.assert_allclose(logits, reference, atol=1e-4)

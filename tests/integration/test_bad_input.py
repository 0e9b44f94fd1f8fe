"""Every kind of bad input, over REST and gRPC: a clear error with the right status, and the
server keeps answering good requests, including ones running at the same time.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import grpc
import httpx
import numpy as np
import pytest

from gateway.grpc.generated import grpc_service_pb2 as pb
from gateway.grpc.generated import grpc_service_pb2_grpc as pb_grpc
from tests.conftest import SHARED_MAX_REQUEST_BYTES
from tests.server import ServerProcess

X = {"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}


@dataclass
class Case:
    """One bad request: its REST form, its gRPC form, and the errors both must give."""

    name: str
    status: int
    code: grpc.StatusCode
    message: str
    rest_body: bytes | dict[str, Any] | None = None
    rest_headers: dict[str, str] = field(default_factory=dict)
    model: str = "versioned"
    version: str | None = None
    grpc_request: Callable[[], pb.ModelInferRequest] | None = None


def _grpc(model: str = "versioned", version: str = "", **tensor: Any) -> Callable[[], pb.ModelInferRequest]:
    def build() -> pb.ModelInferRequest:
        request = pb.ModelInferRequest(model_name=model, model_version=version)
        raw = tensor.pop("raw", None)
        request.inputs.add(**{"name": "x", "datatype": "FP32", "shape": [1, 4], **tensor})
        if raw is not None:
            request.raw_input_contents.append(raw)
        tensor["raw"] = raw
        return request
    return build


def _binary(header: dict[str, Any], data: bytes) -> tuple[bytes, dict[str, str]]:
    head = json.dumps(header).encode()
    return head + data, {"Inference-Header-Content-Length": str(len(head))}


_BINARY_BODY, _BINARY_HEADERS = _binary(
    {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "parameters": {"binary_data_size": 12}}]},
    b"\0" * 12,
)
_OVERSIZED = b"\0" * (SHARED_MAX_REQUEST_BYTES + 1024)

CASES = [
    Case("malformed JSON", 400, grpc.StatusCode.INVALID_ARGUMENT, "malformed JSON", rest_body=b'{"inputs": [}'),
    Case("unknown model", 404, grpc.StatusCode.NOT_FOUND, "unknown model 'nope'", rest_body={"inputs": [X]},
         model="nope", grpc_request=_grpc(model="nope", contents=pb.InferTensorContents(fp32_contents=[1] * 4))),
    Case("unknown version", 404, grpc.StatusCode.NOT_FOUND, "no version '7'", rest_body={"inputs": [X]},
         version="7", grpc_request=_grpc(version="7", contents=pb.InferTensorContents(fp32_contents=[1] * 4))),
    Case("missing input", 400, grpc.StatusCode.INVALID_ARGUMENT, "needs input(s) in_int64", model="identity",
         rest_body={"inputs": [{"name": "in_fp32", "shape": [1, 1], "datatype": "FP32", "data": [1]}]},
         grpc_request=_grpc(model="identity", name="in_fp32", shape=[1, 1],
                            contents=pb.InferTensorContents(fp32_contents=[1]))),
    Case("unexpected input", 400, grpc.StatusCode.INVALID_ARGUMENT, "has no input 'z'",
         rest_body={"inputs": [X, {**X, "name": "z"}]},
         grpc_request=_grpc(name="z", contents=pb.InferTensorContents(fp32_contents=[1] * 4))),
    Case("wrong datatype", 400, grpc.StatusCode.INVALID_ARGUMENT, "datatype INT32 does not match",
         rest_body={"inputs": [{**X, "datatype": "INT32"}]},
         grpc_request=_grpc(datatype="INT32", contents=pb.InferTensorContents(int_contents=[1] * 4))),
    Case("wrong shape", 400, grpc.StatusCode.INVALID_ARGUMENT, "does not match the model's [batch, 4]",
         rest_body={"inputs": [{**X, "shape": [2, 2]}]},
         grpc_request=_grpc(shape=[2, 2], contents=pb.InferTensorContents(fp32_contents=[1] * 4))),
    Case("data length does not match shape", 400, grpc.StatusCode.INVALID_ARGUMENT, "do not match shape",
         rest_body={"inputs": [{**X, "data": [1, 2, 3]}]},
         grpc_request=_grpc(contents=pb.InferTensorContents(fp32_contents=[1] * 3))),
    Case("binary size does not match shape", 400, grpc.StatusCode.INVALID_ARGUMENT, "12 bytes of data",
         rest_body=_BINARY_BODY, rest_headers=_BINARY_HEADERS, grpc_request=_grpc(raw=b"\0" * 12)),
    Case("batch larger than max_batch_size", 400, grpc.StatusCode.INVALID_ARGUMENT,
         "batch size 5 exceeds the model's max_batch_size 4",
         rest_body={"inputs": [{**X, "shape": [5, 4], "data": [0] * 20}]},
         grpc_request=_grpc(shape=[5, 4], contents=pb.InferTensorContents(fp32_contents=[0] * 20))),
    Case("BYTES into a numeric tensor", 400, grpc.StatusCode.INVALID_ARGUMENT, "datatype BYTES does not match",
         rest_body={"inputs": [{**X, "datatype": "BYTES", "data": ["a", "b", "c", "d"]}]},
         grpc_request=_grpc(datatype="BYTES", contents=pb.InferTensorContents(bytes_contents=[b"a"] * 4))),
    Case("oversized body", 413, grpc.StatusCode.RESOURCE_EXHAUSTED, "exceeds the limit", rest_body=_OVERSIZED,
         grpc_request=_grpc(raw=_OVERSIZED)),
]


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.http_url, timeout=30) as c:
        yield c


@pytest.fixture(scope="module")
def stub(server: ServerProcess) -> Iterator[pb_grpc.GRPCInferenceServiceStub]:
    with grpc.insecure_channel(server.grpc_address) as channel:
        yield pb_grpc.GRPCInferenceServiceStub(channel)


def _post(client: httpx.Client, case: Case) -> httpx.Response:
    path = f"/v2/models/{case.model}" + (f"/versions/{case.version}" if case.version else "") + "/infer"
    if isinstance(case.rest_body, dict):
        return client.post(path, json=case.rest_body)
    return client.post(path, content=case.rest_body, headers=case.rest_headers)


def _good(client: httpx.Client, value: float) -> None:
    r = client.post("/v2/models/versioned/infer",
                    json={"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [value] * 4}]})
    assert r.status_code == 200, r.text
    assert r.json()["outputs"][0]["data"] == [value + 2] * 4


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_rest_bad_input(client: httpx.Client, case: Case) -> None:
    r = _post(client, case)
    assert r.status_code == case.status, r.text
    assert case.message in r.json()["error"]
    _good(client, 1.0)


@pytest.mark.parametrize("case", [c for c in CASES if c.grpc_request], ids=lambda c: c.name)
def test_grpc_bad_input(client: httpx.Client, stub: pb_grpc.GRPCInferenceServiceStub, case: Case) -> None:
    assert case.grpc_request is not None
    with pytest.raises(grpc.RpcError) as info:
        stub.ModelInfer(case.grpc_request())
    assert info.value.code() == case.code, info.value.details()
    if case.code != grpc.StatusCode.RESOURCE_EXHAUSTED:  # that one is grpc's own message
        assert case.message in (info.value.details() or "")
    _good(client, 2.0)


def test_bad_and_good_requests_concurrently(client: httpx.Client) -> None:
    """Bad requests of every kind, interleaved with good ones: the good ones are unaffected."""
    def run(i: int) -> None:
        if i % 2:
            case = CASES[(i // 2) % len(CASES)]
            assert _post(client, case).status_code == case.status
        else:
            _good(client, float(i))

    with ThreadPoolExecutor(6) as pool:
        list(pool.map(run, range(4 * len(CASES))))


def test_grpc_typed_and_raw_contents(stub: pb_grpc.GRPCInferenceServiceStub) -> None:
    typed = stub.ModelInfer(_grpc(contents=pb.InferTensorContents(fp32_contents=[1, 2, 3, 4]))())
    raw = stub.ModelInfer(_grpc(raw=np.array([1, 2, 3, 4], dtype=np.float32).tobytes())())
    for reply in (typed, raw):
        assert reply.model_version == "2"
        assert list(reply.outputs[0].shape) == [1, 4]
        np.testing.assert_array_equal(np.frombuffer(reply.raw_output_contents[0], np.float32), [3, 4, 5, 6])

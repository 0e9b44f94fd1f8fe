"""The REST transport against the real server: health, metadata, inference, binary data."""

from __future__ import annotations

import gzip
import json
import socket
import struct
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest

from gateway.rest import schemas
from tests.server import ServerProcess


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.http_url, timeout=30) as c:
        yield c


def test_health_live_and_ready(client: httpx.Client) -> None:
    assert client.get("/v2/health/live").json() == {"live": True}
    assert client.get("/v2/health/ready").json() == {"ready": True}


def test_server_metadata(client: httpx.Client) -> None:
    body = schemas.ServerMetadataResponse.model_validate(client.get("/v2").json())
    assert body.name == "tensorgate"
    assert "binary_tensor_data" in body.extensions


def test_model_index_lists_every_version(client: httpx.Client) -> None:
    body = schemas.ModelIndexResponse.model_validate(client.get("/v2/models").json())
    names = {(m.name, m.version, m.state) for m in body.models}
    assert ("versioned", "1", "READY") in names and ("versioned", "2", "READY") in names
    assert ("versioned", "3", "READY") not in names  # excluded by the version policy


def test_repository_index_is_tritons_list(client: httpx.Client) -> None:
    index = client.post("/v2/repository/index").json()
    for entry in index:
        schemas.RepositoryIndexEntry.model_validate(entry)
    assert {"name": "versioned", "version": "1", "state": "READY", "reason": ""} in index
    ready = client.post("/v2/repository/index", json={"ready": True}).json()
    assert all(e["state"] == "READY" for e in ready) and {"versioned", "identity"} <= {e["name"] for e in ready}
    assert client.post("/v2/repository/index", json={"ready": "yes"}).status_code == 400
    assert client.post("/v2/repository/index", content=b"[1]").status_code == 400


def test_load_and_unload_are_refused_outside_explicit_mode(client: httpx.Client) -> None:
    for action in ("load", "unload"):
        response = client.post(f"/v2/repository/models/versioned/{action}")
        assert response.status_code == 503
        assert "explicit model load / unload is not allowed if polling is enabled" in response.json()["error"]
    assert client.post("/v2/repository/models/..%2Fx/load").status_code == 400  # a bad name is a 400 first
    assert client.get("/v2/models/versioned/ready").status_code == 200


def test_model_metadata_has_batch_dimension(client: httpx.Client) -> None:
    body = client.get("/v2/models/digits_onnx").json()
    schemas.ModelMetadataResponse.model_validate(body)
    assert body["platform"] == "onnxruntime_onnx"
    assert body["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 64]}]
    assert body["outputs"] == [{"name": "logits", "datatype": "FP32", "shape": [-1, 10]}]
    assert client.get("/v2/models/digits_onnx/versions/1").json() == body


def test_model_config_is_triton_shaped_and_filled_from_the_model(client: httpx.Client) -> None:
    body = client.get("/v2/models/identity/config").json()
    assert body["max_batch_size"] == 8
    assert {"name": "in_bytes", "data_type": "TYPE_STRING", "dims": [-1]} in body["input"]
    assert body["instance_group"][0]["kind"] == "KIND_CPU"


def test_model_ready_per_version(client: httpx.Client) -> None:
    assert client.get("/v2/models/versioned/ready").json()["version"] == "2"
    assert client.get("/v2/models/versioned/versions/1/ready").status_code == 200
    assert client.get("/v2/models/versioned/versions/3/ready").status_code == 404


def _infer(client: httpx.Client, model: str, body: dict[str, object], **kwargs: object) -> httpx.Response:
    return client.post(f"/v2/models/{model}/infer", json=body, **kwargs)  # type: ignore[arg-type]


def test_infer_json_flat_and_nested_with_id(client: httpx.Client) -> None:
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    for data in (x.ravel().tolist(), x.tolist()):
        r = _infer(client, "versioned", {"id": "req-7", "inputs": [
            {"name": "x", "shape": [2, 4], "datatype": "FP32", "data": data}]})
        assert r.status_code == 200, r.text
        body = r.json()
        schemas.InferenceResponse.model_validate(body)
        assert body["id"] == "req-7"
        assert body["model_version"] == "2"
        assert body["outputs"][0]["shape"] == [2, 4]
        np.testing.assert_array_equal(body["outputs"][0]["data"], (x + 2).ravel())


def test_infer_routes_to_the_requested_version(client: httpx.Client) -> None:
    body = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [0, 0, 0, 0]}]}
    r = client.post("/v2/models/versioned/versions/1/infer", json=body).json()
    assert r["model_version"] == "1" and r["outputs"][0]["data"] == [1, 1, 1, 1]


def test_requested_output_subset(client: httpx.Client) -> None:
    body = {
        "inputs": [
            {"name": "in_fp32", "shape": [1, 2], "datatype": "FP32", "data": [1.5, 2.5]},
            {"name": "in_int64", "shape": [1, 1], "datatype": "INT64", "data": [2**40]},
            {"name": "in_bytes", "shape": [1, 2], "datatype": "BYTES", "data": ["héllo", ""]},
            {"name": "in_bool", "shape": [1, 3], "datatype": "BOOL", "data": [True, False, True]},
            {"name": "in_fp16", "shape": [1, 1], "datatype": "FP16", "data": [0.5]},
        ],
        "outputs": [{"name": "out_bytes"}, {"name": "out_int64"}],
    }
    outputs = _infer(client, "identity", body).json()["outputs"]
    assert [o["name"] for o in outputs] == ["out_bytes", "out_int64"]
    assert outputs[0]["data"] == ["héllo", ""] and outputs[0]["datatype"] == "BYTES"
    assert outputs[1]["data"] == [2**40]


def _binary_request(header: dict[str, object], *tensors: bytes) -> tuple[bytes, dict[str, str]]:
    head = json.dumps(header).encode()
    return head + b"".join(tensors), {"Inference-Header-Content-Length": str(len(head)),
                                      "Content-Type": "application/octet-stream"}


def test_binary_in_and_out(client: httpx.Client) -> None:
    x = np.random.default_rng(1).standard_normal((3, 4)).astype(np.float32)
    body, headers = _binary_request({
        "inputs": [{"name": "x", "shape": [3, 4], "datatype": "FP32",
                    "parameters": {"binary_data_size": x.nbytes}}],
        "outputs": [{"name": "y", "parameters": {"binary_data": True}}],
    }, x.tobytes())
    r = client.post("/v2/models/versioned/infer", content=body, headers=headers)
    assert r.status_code == 200, r.text
    length = int(r.headers["inference-header-content-length"])
    header = json.loads(r.content[:length])
    assert header["outputs"][0]["parameters"]["binary_data_size"] == x.nbytes
    y = np.frombuffer(r.content[length:], dtype=np.float32).reshape(3, 4)
    np.testing.assert_array_equal(y, x + 2)


def test_binary_data_output_default_and_bytes_tensor(client: httpx.Client) -> None:
    elements = ["é\x00raw".encode(), b"", b"abc"]
    raw = b"".join(struct.pack("<I", len(e)) + e for e in elements)
    header: dict[str, object] = {
        "parameters": {"binary_data_output": True},
        "inputs": [
            {"name": "in_fp32", "shape": [1, 1], "datatype": "FP32", "data": [1]},
            {"name": "in_int64", "shape": [1, 1], "datatype": "INT64", "data": [1]},
            {"name": "in_bytes", "shape": [1, 3], "datatype": "BYTES", "parameters": {"binary_data_size": len(raw)}},
            {"name": "in_bool", "shape": [1, 1], "datatype": "BOOL", "data": [True]},
            {"name": "in_fp16", "shape": [1, 1], "datatype": "FP16", "data": [1]},
        ],
        "outputs": [{"name": "out_bytes"}, {"name": "out_fp32", "parameters": {"binary_data": False}}],
    }
    body, headers = _binary_request(header, raw)
    r = client.post("/v2/models/identity/infer", content=body, headers=headers)
    assert r.status_code == 200, r.text
    length = int(r.headers["inference-header-content-length"])
    outputs = json.loads(r.content[:length])["outputs"]
    assert outputs[0]["parameters"]["binary_data_size"] == len(raw)
    assert outputs[1]["data"] == [1.0]
    assert r.content[length:] == raw  # multi-byte and NUL bytes survive the round trip


def test_gzip_request_body(client: httpx.Client) -> None:
    body = json.dumps({"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]})
    r = client.post("/v2/models/versioned/infer", content=gzip.compress(body.encode()),
                    headers={"Content-Encoding": "gzip", "Content-Type": "application/json"})
    assert r.status_code == 200, r.text
    assert r.json()["outputs"][0]["data"] == [3, 4, 5, 6]


def test_runtime_failure_is_500_for_that_request_only(client: httpx.Client) -> None:
    bad = _infer(client, "failing", {"inputs": [{"name": "x", "shape": [5], "datatype": "FP32", "data": [0] * 5}]})
    assert bad.status_code == 500
    assert "failing" in bad.json()["error"]
    good = _infer(client, "failing", {"inputs": [{"name": "x", "shape": [3], "datatype": "FP32", "data": [1, 2, 3]}]})
    assert good.status_code == 200 and good.json()["outputs"][0]["data"] == [1, 2, 3]


def test_concurrent_requests_get_their_own_rows(client: httpx.Client) -> None:
    """Good and bad requests interleaved: every good one gets exactly its own answer."""

    def call(i: int) -> tuple[int, httpx.Response]:
        if i % 3 == 0:  # a bad request: wrong shape
            return i, _infer(client, "versioned", {"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP32",
                                                               "data": [i, i, i]}]})
        rows = 1 + i % 4
        data = np.full((rows, 4), i, dtype=np.float32)
        return i, _infer(client, "versioned", {"id": str(i), "inputs": [
            {"name": "x", "shape": [rows, 4], "datatype": "FP32", "data": data.tolist()}]})

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(call, range(60)))
    for i, r in results:
        if i % 3 == 0:
            assert r.status_code == 400
            continue
        body = r.json()
        assert body["id"] == str(i)
        assert body["outputs"][0]["data"] == [i + 2.0] * 4 * (1 + i % 4)


def test_raw_http_like_curl(server: ServerProcess) -> None:
    """A hand-written HTTP/1.1 request on a plain socket, as curl would send it."""
    body = b'{"inputs":[{"name":"x","shape":[1,4],"datatype":"FP32","data":[1,1,1,1]}]}'
    request = (b"POST /v2/models/versioned/versions/1/infer HTTP/1.1\r\nHost: localhost\r\n"
               b"Content-Type: application/json\r\nContent-Length: " + str(len(body)).encode()
               + b"\r\nConnection: close\r\n\r\n" + body)
    with socket.create_connection(("127.0.0.1", server.http_port), timeout=10) as sock:
        sock.sendall(request)
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    head, _, payload = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert json.loads(payload)["outputs"][0]["data"] == [2, 2, 2, 2]


def test_openapi_documents_every_route(client: httpx.Client) -> None:
    document = client.get("/openapi.json").json()
    paths = document["paths"]
    for path in ("/v2/health/live", "/v2/health/ready", "/v2", "/v2/models", "/v2/models/{model_name}",
                 "/v2/models/{model_name}/versions/{model_version}/infer", "/v2/models/{model_name}/config"):
        assert path in paths, path
    infer = paths["/v2/models/{model_name}/infer"]["post"]
    assert infer["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("/InferenceRequest")
    assert "InferenceRequest" in document["components"]["schemas"]
    assert "RequestInput" in document["components"]["schemas"]
    assert set(infer["responses"]) >= {"200", "400", "404", "413", "503"}


def test_unknown_route_is_a_json_error(client: httpx.Client) -> None:
    r = client.get("/v2/nothing/here")
    assert r.status_code == 404 and "error" in r.json()

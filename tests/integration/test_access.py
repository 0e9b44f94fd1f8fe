"""API keys on endpoint groups and CORS, against real servers: raw HTTP as a browser or an attacker
would send it (httpx, sockets), our gRPC stubs, and tritonclient HTTP/gRPC in a process of its own."""

from __future__ import annotations

import os
import re
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import pytest
from fastapi.routing import APIRoute
from grpc_health.v1 import health_pb2, health_pb2_grpc
from starlette.routing import Route

from gateway.dataplane import DataPlane, WorkerLinks
from gateway.grpc.generated import grpc_service_pb2 as pb
from gateway.grpc.generated import grpc_service_pb2_grpc as pb_grpc
from gateway.metrics import RequestMetrics
from gateway.protocol.system_shm import SystemSharedMemory
from gateway.rest.app import create_app
from tests import model_factory
from tests.helpers import ROOT, run_client_script
from tests.server import SECRETS, ServerProcess

CLIENT_KEYS = (secrets.token_hex(16), secrets.token_hex(16))  # two: an old and a new one, during a rotation
ADMIN_KEYS = (secrets.token_hex(16), secrets.token_hex(16))
SECRETS.update(CLIENT_KEYS + ADMIN_KEYS)
ORIGIN = "https://app.example.com"
X = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1.5] * 4}]}


@pytest.fixture(scope="module")
def keyed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """inference and metrics need a client key (from the variable), the repository and shared memory an
    admin key (from a file with blank lines, CRLF and stray spaces); CORS for one origin."""
    root = tmp_path_factory.mktemp("keyed")
    repo = root / "repo"
    model_factory.offset_model(repo, "offset")
    admin_file = root / "admin-keys"
    admin_file.write_bytes(f"\r\n  {ADMIN_KEYS[0]}  \r\n\n\t{ADMIN_KEYS[1]}\n\n".encode())
    server = ServerProcess(repo, [
        "--model-control-mode", "explicit", "--load-model", "offset",
        "--protect", f"model-repository,shared-memory:X-Admin-Key:{admin_file}",
        "--protect", "inference,metrics:x-api-key",
        "--cors-origins", ORIGIN,
    ], env={"TENSORGATE_API_KEYS": ",".join(CLIENT_KEYS), "TENSORGATE_OPEN_GROUPS": ""})
    server.start()
    yield server
    assert server.stop() == 0, server.log()
    assert "Traceback" not in server.log(), server.log()


@pytest.fixture(scope="module")
def defaults(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """No access settings at all (and no models: nothing to wait for)."""
    repo = tmp_path_factory.mktemp("defaults") / "repo"
    repo.mkdir()
    server = ServerProcess(repo, env={"TENSORGATE_OPEN_GROUPS": ""})
    server.start()
    yield server
    assert server.stop() == 0, server.log()
    assert "Traceback" not in server.log(), server.log()


def _raw(server: ServerProcess, request: bytes) -> bytes:
    """Send one raw HTTP/1.1 request (closing the connection) and read the whole answer."""
    with socket.create_connection(("127.0.0.1", server.http_port), timeout=60) as sock:
        sock.sendall(request)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


# --- the defaults ---------------------------------------------------------------------------------


def test_by_default_the_repository_and_shared_memory_are_refused_and_the_rest_open(defaults: ServerProcess) -> None:
    for path in ("/v2/repository/index", "/v2/systemsharedmemory/status", "/v2/cudasharedmemory/status"):
        reply = httpx.post(defaults.http_url + path) if path.endswith("index") else httpx.get(defaults.http_url + path)
        assert reply.status_code == 403, (path, reply.text)
        assert "disabled on this server" in reply.json()["error"] and "www-authenticate" not in reply.headers
    for path in ("/v2/health/live", "/v2", "/v2/models/stats", "/v2/models"):
        assert httpx.get(defaults.http_url + path).status_code == 200, path
    assert httpx.get(defaults.metrics_url).status_code == 200
    with grpc.insecure_channel(defaults.grpc_address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        for call, request in ((stub.RepositoryIndex, pb.RepositoryIndexRequest()),
                              (stub.SystemSharedMemoryStatus, pb.SystemSharedMemoryStatusRequest())):
            with pytest.raises(grpc.RpcError) as info:
                call(request)
            assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED, info.value.details()
        assert stub.ServerLive(pb.ServerLiveRequest()).live
        health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())  # answered, not refused


def test_cors_is_off_by_default(defaults: ServerProcess) -> None:
    preflight = httpx.options(defaults.http_url + "/v2/health/live",
                              headers={"origin": ORIGIN, "access-control-request-method": "GET"})
    assert preflight.status_code == 405
    for reply in (preflight, httpx.get(defaults.http_url + "/v2/health/live", headers={"origin": ORIGIN}),
                  httpx.post(defaults.http_url + "/v2/models/none/infer", json=X, headers={"origin": ORIGIN})):
        assert not [h for h in reply.headers if h.startswith("access-control-")], reply.headers


# --- keys --------------------------------------------------------------------------------------------


def test_inference_needs_one_of_the_client_keys(keyed: ServerProcess) -> None:
    url = keyed.http_url + "/v2/models/offset/infer"
    missing = httpx.post(url, json=X)
    assert missing.status_code == 401 and "x-api-key" in missing.json()["error"]
    assert missing.headers["www-authenticate"] == 'ApiKey header="x-api-key"'
    for key in CLIENT_KEYS:
        reply = httpx.post(url, json=X, headers={"x-api-key": key})
        assert reply.status_code == 200 and reply.json()["outputs"][0]["data"] == [2.5] * 4
    # The versioned path, and the ASGI twin (an encoded slash leaves the fast path; the app decodes it).
    assert httpx.post(keyed.http_url + "/v2/models/offset/versions/1/infer", json=X).status_code == 401
    assert httpx.post(keyed.http_url + "/v2/models/offset%2Finfer", json=X).status_code == 401
    assert httpx.post(keyed.http_url + "/v2/models/offset%2Finfer", json=X,
                      headers={"x-api-key": CLIENT_KEYS[0]}).status_code == 200


def test_a_wrong_or_misplaced_key_is_refused(keyed: ServerProcess) -> None:
    url = keyed.http_url + "/v2/models/offset/infer"
    for headers in ({"x-api-key": ADMIN_KEYS[0]},  # a key of another group
                    {"x-api-key": CLIENT_KEYS[0][:-1]}, {"x-api-key": CLIENT_KEYS[0] + "0"},
                    {"x-admin-key": CLIENT_KEYS[0]}):  # the right key in another header
        reply = httpx.post(url, json=X, headers=headers)
        assert reply.status_code == 401, headers
        assert not any(key in reply.text for key in CLIENT_KEYS + ADMIN_KEYS)
    index = keyed.http_url + "/v2/repository/index"
    assert httpx.post(index, headers={"x-admin-key": CLIENT_KEYS[0]}).status_code == 401
    assert httpx.post(index, headers={"x-api-key": ADMIN_KEYS[0]}).status_code == 401
    assert httpx.post(index, headers={"x-admin-key": ADMIN_KEYS[1]}).status_code == 200


def test_a_header_must_carry_exactly_one_key(keyed: ServerProcess) -> None:
    url = keyed.http_url + "/v2/models/offset/infer"
    good = CLIENT_KEYS[0]
    thousand = [("x-api-key", good)] * 1000
    for headers in (thousand, [("x-api-key", good), ("x-api-key", good)],
                    [("x-api-key", f"{good},{good}")], [("x-api-key", ",".join(CLIENT_KEYS))],
                    [("x-api-key", ",".join([good] * 1000))]):
        reply = httpx.post(url, json=X, headers=headers)
        assert reply.status_code == 401, headers[:2]
        assert "exactly one key" in reply.json()["error"]
    assert httpx.post(url, json=X, headers={"X-API-KEY": good}).status_code == 200  # names are case-blind


def test_a_very_long_header_gets_431_and_the_server_carries_on(keyed: ServerProcess) -> None:
    answer = _raw(keyed, b"GET /v2/health/live HTTP/1.1\r\nhost: x\r\nx-api-key: " + b"k" * 200_000 + b"\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 431 "), answer[:100]
    assert b"exceed" in answer
    assert httpx.get(keyed.http_url + "/v2/health/live").status_code == 200


def test_every_way_to_spell_a_protected_path_is_checked(keyed: ServerProcess) -> None:
    """The group is taken from the path the app routes on: percent-encoded, or an absolute-form target."""
    for target in (b"/v2/%72epository/index", b"/v2/repository%2Findex",
                   b"http://127.0.0.1/v2/repository/index", b"/v2/repository/index?x=1"):
        answer = _raw(keyed, b"POST %s HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\nconnection: close\r\n\r\n" % target)
        assert answer.startswith(b"HTTP/1.1 401 "), (target, answer[:200])


def test_a_refused_body_is_not_kept_and_the_connection_stays_usable(keyed: ServerProcess) -> None:
    with httpx.Client(base_url=keyed.http_url) as client:
        big = b"\0" * (4 * 1024 * 1024)
        reply = client.post("/v2/models/offset/infer", content=big, headers={"content-type": "application/json"})
        assert reply.status_code == 401
        again = client.post("/v2/models/offset/infer", json=X, headers={"x-api-key": CLIENT_KEYS[1]})
        assert again.status_code == 200


def test_metrics_need_the_client_key(keyed: ServerProcess) -> None:
    refused = httpx.get(keyed.metrics_url)
    assert refused.status_code == 401 and refused.headers["www-authenticate"] == 'ApiKey header="x-api-key"'
    assert "metrics" in refused.json()["error"]
    assert httpx.get(keyed.metrics_url, headers={"x-api-key": ADMIN_KEYS[0]}).status_code == 401
    assert "tensorgate_" in httpx.get(keyed.metrics_url, headers={"x-api-key": CLIENT_KEYS[0]}).text


def test_open_groups_stay_open(keyed: ServerProcess) -> None:
    for path in ("/v2/health/live", "/v2/health/ready", "/v2/models/offset/ready", "/v2", "/v2/models/offset",
                 "/v2/models/offset/config", "/v2/models/stats"):
        assert httpx.get(keyed.http_url + path).status_code == 200, path


def test_grpc_keys(keyed: ServerProcess) -> None:
    request = pb.ModelInferRequest(model_name="offset", inputs=[pb.ModelInferRequest.InferInputTensor(
        name="x", datatype="FP32", shape=[1, 4], contents=pb.InferTensorContents(fp32_contents=[1.5] * 4))])
    with grpc.insecure_channel(keyed.grpc_address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        for metadata in ((), (("x-api-key", ADMIN_KEYS[0]),), (("x-api-key", CLIENT_KEYS[0]),) * 50,
                         (("x-api-key", ",".join(CLIENT_KEYS)),), (("x-admin-key", CLIENT_KEYS[0]),)):
            with pytest.raises(grpc.RpcError) as info:
                stub.ModelInfer(request, metadata=metadata)
            assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED, metadata[:1]
            with pytest.raises(grpc.RpcError) as info:
                list(stub.ModelStreamInfer(iter([request]), metadata=metadata))
            assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        reply = stub.ModelInfer(request, metadata=(("x-api-key", CLIENT_KEYS[1]),))
        assert reply.model_name == "offset"
        streamed = list(stub.ModelStreamInfer(iter([request]), metadata=(("x-api-key", CLIENT_KEYS[0]),)))
        assert not streamed[0].error_message
        with pytest.raises(grpc.RpcError) as info:
            stub.RepositoryIndex(pb.RepositoryIndexRequest(), metadata=(("x-admin-key", CLIENT_KEYS[0]),))
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert stub.RepositoryIndex(pb.RepositoryIndexRequest(), metadata=(("x-admin-key", ADMIN_KEYS[0]),)).models
        assert stub.ServerReady(pb.ServerReadyRequest()).ready
        assert stub.ModelMetadata(pb.ModelMetadataRequest(name="offset")).name == "offset"


def test_a_refusal_is_logged_without_the_key(keyed: ServerProcess) -> None:
    wrong = secrets.token_hex(16)
    SECRETS.add(wrong)  # tests/conftest.py checks every log line of the session for it too
    reply = httpx.get(keyed.http_url + "/v2/systemsharedmemory/status", headers={"x-admin-key": wrong})
    assert reply.status_code == 401
    deadline = time.monotonic() + 60
    while "group=shared-memory reason=wrong" not in keyed.log() and time.monotonic() < deadline:
        time.sleep(0.05)
    line = next(line for line in keyed.log().splitlines() if "group=shared-memory reason=wrong" in line)
    assert "event=access_refused" in line and "protocol=rest" in line and "header=x-admin-key" in line
    assert "target=/v2/systemsharedmemory/status" in line and "client=127.0.0.1" in line
    assert wrong not in keyed.log()


def test_the_runtime_workers_get_no_keys(keyed: ServerProcess) -> None:
    """Model code runs in the workers: the keys variable is not passed on to them."""
    pids = keyed.worker_pids()
    assert pids
    for pid in pids:
        environment = Path(f"/proc/{pid}/environ").read_bytes()
        assert b"TENSORGATE_API_KEYS" not in environment and CLIENT_KEYS[0].encode() not in environment


def test_a_very_long_grpc_header_is_refused_and_the_server_carries_on(keyed: ServerProcess) -> None:
    with grpc.insecure_channel(keyed.grpc_address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            stub.ServerLive(pb.ServerLiveRequest(), metadata=(("x-api-key", "k" * 200_000),))
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, info.value
    with grpc.insecure_channel(keyed.grpc_address) as channel:
        assert pb_grpc.GRPCInferenceServiceStub(channel).ServerLive(pb.ServerLiveRequest()).live


def test_tritonclient_http_and_grpc_send_keys_with_headers(keyed: ServerProcess) -> None:
    os.environ.update(ACCESS_CLIENT_KEY=CLIENT_KEYS[0], ACCESS_ADMIN_KEY=ADMIN_KEYS[1])
    try:
        result = run_client_script(ROOT / "tests" / "integration" / "access_checks.py",
                                   f"127.0.0.1:{keyed.http_port}", keyed.grpc_address, "offset")
    finally:
        del os.environ["ACCESS_CLIENT_KEY"], os.environ["ACCESS_ADMIN_KEY"]
    assert result["ok"], result.get("error")


# --- CORS ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/v2/models/offset/infer", "/v2/models/offset/versions/1/infer",
                                  "/v2/repository/index", "/v2/health/live", "/v2/models/offset"])
def test_preflight_is_answered_on_every_route_without_a_key(keyed: ServerProcess, path: str) -> None:
    reply = httpx.options(keyed.http_url + path, headers={
        "origin": ORIGIN, "access-control-request-method": "POST",
        "access-control-request-headers": "content-type, x-api-key, inference-header-content-length"})
    assert reply.status_code == 204, reply.text
    assert reply.headers["access-control-allow-origin"] == ORIGIN and reply.headers["vary"] == "origin"
    assert set(reply.headers["access-control-allow-methods"].split(", ")) == {"GET", "POST"}
    allowed = set(reply.headers["access-control-allow-headers"].split(", "))
    assert {"content-type", "x-api-key", "x-admin-key", "inference-header-content-length"} <= allowed
    assert "content-length" not in reply.headers and not reply.content


def test_preflight_is_answered_on_every_route_of_the_app(keyed: ServerProcess) -> None:
    app = create_app(DataPlane(RequestMetrics(enabled=False), WorkerLinks(1 << 20)), 1 << 20, SystemSharedMemory())
    paths = {re.sub(r"\{[^}:]+(:path)?\}", "offset", r.path) for r in app.routes if isinstance(r, (APIRoute, Route))}
    assert len(paths) > 20
    with httpx.Client(base_url=keyed.http_url) as client:
        for path in sorted(paths):
            for method in ("GET", "POST"):
                reply = client.options(path, headers={"origin": ORIGIN, "access-control-request-method": method})
                assert reply.status_code == 204, (path, reply.text)
                assert reply.headers["access-control-allow-origin"] == ORIGIN


def test_preflight_from_another_origin_or_for_another_method_or_header_is_refused(keyed: ServerProcess) -> None:
    url = keyed.http_url + "/v2/models/offset/infer"
    for headers, words in (({"origin": "https://evil.example", "access-control-request-method": "POST"}, "origin"),
                           ({"origin": ORIGIN, "access-control-request-method": "DELETE"}, "method"),
                           ({"origin": ORIGIN, "access-control-request-method": "POST",
                             "access-control-request-headers": "x-other"}, "header x-other")):
        reply = httpx.options(url, headers=headers)
        assert reply.status_code == 403 and words in reply.json()["error"], reply.text
        assert "access-control-allow-origin" not in reply.headers


def test_answers_to_an_allowed_origin_carry_cors_headers_errors_included(keyed: ServerProcess) -> None:
    origin = {"origin": ORIGIN}
    for reply in (httpx.post(keyed.http_url + "/v2/models/offset/infer", json=X,
                             headers={**origin, "x-api-key": CLIENT_KEYS[0]}),  # the fast path
                  httpx.post(keyed.http_url + "/v2/models/offset/infer", json=X, headers=origin),  # 401
                  httpx.post(keyed.http_url + "/v2/models/nothing/infer", json=X,
                             headers={**origin, "x-api-key": CLIENT_KEYS[0]}),  # 404 from the fast path
                  httpx.get(keyed.http_url + "/v2/health/live", headers=origin),  # the ASGI app
                  httpx.get(keyed.http_url + "/v2/models/nothing", headers=origin)):  # its 404
        assert reply.headers["access-control-allow-origin"] == ORIGIN, (reply.status_code, reply.headers)
        assert reply.headers["access-control-expose-headers"] == "inference-header-content-length"
    for reply in (httpx.get(keyed.http_url + "/v2/health/live", headers={"origin": "https://evil.example"}),
                  httpx.get(keyed.http_url + "/v2/health/live")):
        assert not [h for h in reply.headers if h.startswith("access-control-")], reply.headers


def test_start_up_refuses_keys_it_cannot_use(tmp_path: Path) -> None:
    """Checked before anything starts: the message names the file or variable, never a key."""
    key = secrets.token_hex(16)
    SECRETS.add(key)
    (tmp_path / "empty").write_text("\n  \n\r\n")
    (tmp_path / "bad").write_text(f"{key}\n{key} {key}\n")
    repo = tmp_path / "repo"
    repo.mkdir()
    cases = [
        (["--protect", "inference:x-api-key", "--api-keys-file", str(tmp_path / "missing")], {},
         f"API keys file {tmp_path / 'missing'}: no such file"),
        (["--protect", f"inference:x-api-key:{tmp_path / 'empty'}"], {}, f"{tmp_path / 'empty'}: no keys in it"),
        (["--protect", "inference:x-api-key", "--api-keys-file", str(tmp_path / "bad")], {},
         f"{tmp_path / 'bad'}, line 2: not a valid key"),
        (["--protect", "inference:x-api-key"], {}, "no keys for it"),
        (["--protect", "inference:x-api-key"], {"TENSORGATE_API_KEYS": " , "}, "TENSORGATE_API_KEYS: no keys"),
        (["--protect", "inference:x-api-key"], {"TENSORGATE_API_KEYS": "short"}, "key 1 is not a valid key"),
    ]
    for args, env, message in cases:
        run = subprocess.run([sys.executable, "-m", "gateway.cli", "serve", "--model-repo", str(repo), *args],
                             cwd=ROOT, capture_output=True, text=True, timeout=120,
                             env={**os.environ, **env})
        assert run.returncode == 2 and message in run.stderr, (args, run.stderr)
        assert key not in run.stderr and "Traceback" not in run.stderr

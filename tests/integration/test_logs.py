"""The server's logs as a log shipper reads them: every line of a real server's output parsed
strictly as logfmt (``--log-format text``) or JSON (``json``), the access log, clients that hang
up (one debug line and a metric, never an error), and the standard process metrics per process.

Two servers of their own: text at debug level with the access log and Triton's metric names, and
JSON at info level with the access log.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import pytest

from gateway.grpc.generated import grpc_service_pb2 as pb
from gateway.grpc.generated import grpc_service_pb2_grpc as pb_grpc
from tests import model_factory
from tests.server import ServerProcess

pytestmark = pytest.mark.slow

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{TRACE_ID}-00f067aa0ba902b7-01"
#: Sent in headers and the query string; must never reach the log.
SECRET = "s3cr3t-key-value"
#: Loop turns that keep the slow model busy long enough for a client to give up on it.
SLOW_TURNS = 3_000_000
RFC3339_UTC = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")
COMMON = ["ts", "level", "process", "logger", "event"]

# --- a strict logfmt reader -----------------------------------------------------------------------------------

_PAIR = re.compile(r'([^\s="\\]+)=("(?:[^"\\]|\\.)*"|[^\s="\\]*)(?: |$)')
_ESCAPES = {"\\\\": "\\", '\\"': '"', "\\n": "\n", "\\r": "\r", "\\t": "\t"}


def parse_logfmt(line: str) -> dict[str, str]:
    """``key=value`` pairs separated by one space; a value with a space, quote, ``=`` or backslash
    is quoted, with backslash escapes; anything else (a bare quote, a stray space) is refused."""
    pairs: dict[str, str] = {}
    position = 0
    while position < len(line):
        match = _PAIR.match(line, position)
        assert match is not None, f"not logfmt at column {position}: {line!r}"
        key, raw = match.groups()
        assert key not in pairs, f"key {key} twice: {line!r}"
        pairs[key] = re.sub(r"\\.", lambda m: _ESCAPES[m.group(0)], raw[1:-1]) if raw.startswith('"') else raw
        position = match.end()
    assert line and not line.endswith(" "), repr(line)
    return pairs


def test_the_logfmt_reader_is_strict() -> None:
    assert parse_logfmt('a=1 b="x y" c="q\\"uote" d=') == {"a": "1", "b": "x y", "c": 'q"uote', "d": ""}
    for bad in ("ts=2026-12-01 08:07:52,000 level=INFO", 'a="open', "a=1  b=2", 'a=x"y', "just words"):
        with pytest.raises(AssertionError):
            parse_logfmt(bad)


# --- servers and traffic --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = tmp_path_factory.mktemp("logs") / "repo"
    model_factory.delay_model(repo, turns=10)
    model_factory.slow_model(repo)
    return repo


def _slow_rest_body() -> bytes:
    return json.dumps({"inputs": [{"name": "iterations", "datatype": "INT64", "shape": [1], "data": [SLOW_TURNS]},
                                  {"name": "x", "datatype": "FP32", "shape": [64, 64], "data": [0.0] * 4096}]}).encode()


def _slow_grpc_request() -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="slow")
    request.inputs.add(name="iterations", datatype="INT64", shape=[1])
    request.inputs.add(name="x", datatype="FP32", shape=[64, 64])
    request.raw_input_contents.extend([np.array([SLOW_TURNS], np.int64).tobytes(),
                                       np.zeros((64, 64), np.float32).tobytes()])
    return request


def _hang_up(port: int, data: bytes, after_s: float) -> None:
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(data)
        time.sleep(after_s)


def _until(condition: Any, what: str, server: ServerProcess) -> None:
    deadline = time.monotonic() + 60
    while not condition():
        assert time.monotonic() < deadline, f"{what}:\n{server.log()}"
        time.sleep(0.1)


def _traffic(server: ServerProcess) -> None:
    """Requests that succeed, fail, and are given up on, over REST and gRPC."""
    infer = {"id": "req-7", "inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}]}
    reply = httpx.post(f"{server.http_url}/v2/models/delay/infer?token={SECRET}", json=infer, timeout=60,
                       headers={"traceparent": TRACEPARENT, "authorization": f"Bearer {SECRET}", SECRET: "x"})
    assert reply.status_code == 200, reply.text
    assert httpx.get(f"{server.http_url}/v2/models/delay/versions/1", timeout=60).status_code == 200
    assert httpx.post(f"{server.http_url}/v2/models/nope/infer", json=infer, timeout=60).status_code == 404
    # A client that hangs up mid-body (REST), and one that gives up while its request computes.
    _hang_up(server.http_port, b"POST /v2/models/delay/infer HTTP/1.1\r\nhost: x\r\ncontent-length: 1000\r\n\r\n{",
             0.2)
    with socket.create_connection(("127.0.0.1", server.http_port)) as sock:  # not HTTP at all
        sock.sendall(b"\x16\x03\x01 not http\r\n\r\n")
        assert sock.recv(65536).startswith(b"HTTP/1.1 400 ")
    body = _slow_rest_body()
    head = b"POST /v2/models/slow/infer HTTP/1.1\r\nhost: x\r\ncontent-length: %d\r\n\r\n" % len(body)
    _hang_up(server.http_port, head + body, 1.0)
    with grpc.insecure_channel(server.grpc_address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        tensor = pb.ModelInferRequest.InferInputTensor(name="x", datatype="FP32", shape=[1, 4],
                                                       contents=pb.InferTensorContents(fp32_contents=[1, 2, 3, 4]))
        stub.ModelInfer(pb.ModelInferRequest(model_name="delay", id="grpc-1", inputs=[tensor]),
                        metadata=[("traceparent", TRACEPARENT), ("authorization", SECRET)], timeout=60)
        with pytest.raises(grpc.RpcError):  # a region's name is no model's
            stub.SystemSharedMemoryStatus(pb.SystemSharedMemoryStatusRequest(name="region-9"), timeout=60)
        call = stub.ModelInfer.future(_slow_grpc_request())
        time.sleep(1.0)
        call.cancel()
    with grpc.insecure_channel(server.grpc_address) as channel:  # closed mid-call
        pending = pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer.future(_slow_grpc_request())
        time.sleep(1.0)
    assert pending.cancelled() or pending.exception() is not None
    _until(lambda: _cancelled(server) >= 3, "the cancelled requests to be counted", server)


def _reach_every_frontend(server: ServerProcess) -> None:
    """At info, a frontend logs only the requests it served (access lines), and SO_REUSEPORT spreads
    connections by a hash: _traffic's dozen connections all landed on one frontend about once in a
    hundred runs. New connections go on until each frontend has logged one."""
    frontends = {f"frontend-{i}" for i in range(int(os.environ.get("TENSORGATE_FRONTENDS", "2")))}

    def logged() -> set[str]:
        seen = set()
        for line in server.log().splitlines():
            with contextlib.suppress(ValueError):  # the line being written
                seen.add(json.loads(line).get("process"))
        return seen

    deadline = time.monotonic() + 60
    while not frontends <= logged():
        assert time.monotonic() < deadline, f"a frontend served no request:\n{server.log()}"
        assert httpx.get(f"{server.http_url}/v2/health/live", timeout=60).status_code == 200  # a new connection


def _cancelled(server: ServerProcess) -> float:
    samples = _samples(httpx.get(server.metrics_url, timeout=60).text, "tensorgate_requests_total")
    return sum(value for labels, value in samples.items() if ("outcome", "cancelled") in labels)


def _wrk(server: ServerProcess, script: Path) -> None:
    """wrk's connections close in the middle of requests when it stops: a few hang-ups at once."""
    wrk = shutil.which("wrk")
    if wrk is None:
        pytest.skip("wrk is not installed (.ci/run installs it)")
    script.write_text('wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
                      'wrk.body = \'{"inputs":[{"name":"x","datatype":"FP32","shape":[1,4],"data":[1,2,3,4]}]}\'\n')
    run = subprocess.run([wrk, "-t1", "-c16", "-d2s", "-s", str(script), f"{server.http_url}/v2/models/delay/infer"],
                         capture_output=True, text=True, timeout=120, check=False)
    assert run.returncode == 0, run.stderr


@pytest.fixture(scope="module")
def text_server(repo: Path) -> Iterator[tuple[ServerProcess, str]]:
    # grpc.aio on the gRPC port: its debug logging is the other library whose lines this module checks.
    # The json server runs the default server (native), so the access lines are checked on both.
    server = ServerProcess(repo, ["--log-level", "debug", "--log-format", "text", "--access-log",
                                  "--metrics-compat", "triton", "--grpc-server", "aio"])
    server.start(timeout=120)
    try:
        _traffic(server)
        _wrk(server, repo.parent / "post.lua")
        metrics = httpx.get(server.metrics_url, timeout=60).text
    finally:
        code = server.stop()
    assert code == 0, server.log()
    yield server, metrics


@pytest.fixture(scope="module")
def json_server(repo: Path) -> Iterator[ServerProcess]:
    server = ServerProcess(repo, ["--log-format", "json", "--access-log"])
    server.start(timeout=120)
    try:
        _traffic(server)
        _reach_every_frontend(server)
    finally:
        code = server.stop()
    assert code == 0, server.log()
    yield server


def _text_lines(server: ServerProcess) -> list[dict[str, str]]:
    return [parse_logfmt(line) for line in server.log().splitlines()]


def _json_lines(server: ServerProcess) -> list[dict[str, Any]]:
    lines = []
    for line in server.log().splitlines():
        record = json.loads(line)
        assert isinstance(record, dict), line
        lines.append(record)
    return lines


# --- the formats ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["text", "json"])
def test_every_line_parses_with_the_common_fields_first(kind: str, request: pytest.FixtureRequest) -> None:
    if kind == "text":
        server, _ = request.getfixturevalue("text_server")
        lines: list[dict[str, Any]] = list(_text_lines(server))
        expected = {"supervisor", "frontend-0", "frontend-1", "worker-onnxruntime"}
    else:
        lines = _json_lines(request.getfixturevalue("json_server"))
        expected = {"supervisor", "frontend-0", "frontend-1"}  # at info, the worker has nothing to say
    assert len(lines) > 5
    for line in lines:
        assert list(line)[:5] == COMMON, line
        assert RFC3339_UTC.fullmatch(line["ts"]), line
        assert line["level"] in ("debug", "info", "warning", "error", "critical"), line
    assert {line["process"] for line in lines} == expected


def test_children_log_at_the_configured_level(text_server: tuple[ServerProcess, str],
                                              json_server: ServerProcess) -> None:
    """The worker used to log at INFO whatever --log-level said; its debug line follows the flag now."""
    debug = [line for line in _text_lines(text_server[0]) if line["level"] == "debug"]
    assert any(line["process"] == "worker-onnxruntime" and line["event"] == "worker_serving" for line in debug)
    assert [line for line in _json_lines(json_server) if line["level"] == "debug"] == []


def test_other_libraries_go_through_the_same_formatter(text_server: tuple[ServerProcess, str]) -> None:
    """grpc's Python logging (at debug) arrives as event=log lines with its text in msg."""
    foreign = [line for line in _text_lines(text_server[0]) if line["logger"].startswith("grpc")]
    assert foreign and all(line["event"] == "log" and line["msg"] for line in foreign)


def test_hang_ups_are_no_errors(text_server: tuple[ServerProcess, str], json_server: ServerProcess) -> None:
    """No traceback and nothing at error level for clients that hang up (mid-body, mid-compute, gRPC
    cancel, a closed channel, wrk stopping); each cancelled inference is one debug line."""
    for server in (text_server[0], json_server):
        assert "Traceback" not in server.log()
    lines = _text_lines(text_server[0])
    assert [line for line in lines if line["level"] in ("error", "critical")] == []
    cancelled = [line for line in lines if line["event"] == "request_cancelled"]
    # (wrk's requests still in flight when it stops are cancelled delay requests)
    assert {("slow", "rest"), ("slow", "grpc")} <= {(line["model"], line["protocol"]) for line in cancelled}
    assert all(line["level"] == "debug" for line in cancelled)


# --- the access log -------------------------------------------------------------------------------------------


def _access(lines: list[dict[str, Any]], **match: str) -> list[dict[str, Any]]:
    return [line for line in lines if line["event"] == "request" and all(str(line[k]) == v for k, v in match.items())]


@pytest.mark.parametrize("kind", ["text", "json"])
def test_access_lines(kind: str, request: pytest.FixtureRequest) -> None:
    if kind == "text":
        server, _ = request.getfixturevalue("text_server")
        lines: list[dict[str, Any]] = list(_text_lines(server))
    else:
        server = request.getfixturevalue("json_server")
        lines = _json_lines(server)
    [rest] = _access(lines, protocol="rest", endpoint="/v2/models/delay/infer", request_id="req-7")
    assert (rest["model"], rest["version"], str(rest["status"]), rest["trace_id"]) == ("delay", "1", "200", TRACE_ID)
    assert rest["client"].startswith("127.0.0.1:") and float(rest["duration_ms"]) > 0
    assert list(rest)[5:] == ["protocol", "endpoint", "model", "version", "status", "duration_ms", "request_id",
                              "client", "trace_id"]
    [grpc_line] = _access(lines, protocol="grpc", endpoint="ModelInfer", request_id="grpc-1")
    assert (grpc_line["model"], grpc_line["version"], grpc_line["status"]) == ("delay", "1", "OK")
    assert grpc_line["trace_id"] == TRACE_ID and "127.0.0.1" in grpc_line["client"]
    assert _access(lines, endpoint="/v2/models/delay/versions/1", model="delay", version="1", status="200")
    assert _access(lines, endpoint="/v2/models/nope/infer", model="nope", status="404", trace_id="")
    assert _access(lines, protocol="rest", status="400", model="", request_id="")  # malformed HTTP
    [region] = _access(lines, protocol="grpc", endpoint="SystemSharedMemoryStatus")
    assert (region["model"], region["status"]) == ("", "INVALID_ARGUMENT")  # no such region
    assert len(_access(lines, protocol="rest", model="slow", status="499")) == 1
    assert len(_access(lines, protocol="rest", model="delay", status="499")) >= 1  # hung up mid-body
    assert len(_access(lines, protocol="grpc", model="slow", status="CANCELLED")) == 2
    assert SECRET not in server.log()


# --- metrics --------------------------------------------------------------------------------------------------


def _samples(text: str, name: str) -> dict[frozenset[tuple[str, str]], float]:
    found = {}
    for line in text.splitlines():
        if line.startswith(name + "{"):
            labels, value = line[len(name) + 1:].rsplit("} ", 1)
            found[frozenset(re.findall(r'(\w+)="([^"]*)"', labels))] = float(value)
    return found


def test_cancelled_requests_are_counted(text_server: tuple[ServerProcess, str]) -> None:
    metrics = text_server[1]
    requests = _samples(metrics, "tensorgate_requests_total")
    for protocol, count in (("rest", 1), ("grpc", 2)):
        key = frozenset({("model", "slow"), ("version", "1"), ("protocol", protocol), ("outcome", "cancelled")})
        assert requests[key] == count, (protocol, requests)
    failures = _samples(metrics, "nv_inference_request_failure")
    assert failures[frozenset({("model", "slow"), ("version", "1"), ("reason", "CANCELED")})] == 3


def test_process_metrics_of_every_process(text_server: tuple[ServerProcess, str]) -> None:
    """prometheus_client's own collectors, in each process, one series per process."""
    metrics = text_server[1]
    processes = {"supervisor", "frontend-0", "frontend-1", "worker-onnxruntime"}
    for name in ("process_resident_memory_bytes", "process_cpu_seconds_total", "process_open_fds",
                 "process_start_time_seconds"):
        samples = _samples(metrics, name)
        assert {dict(labels)["process"] for labels in samples} == processes, (name, samples)
        assert all(value > 0 for value in samples.values()), (name, samples)
    assert {dict(labels)["process"] for labels in _samples(metrics, "python_info")} == processes
    collected = _samples(metrics, "python_gc_objects_collected_total")
    assert {(dict(labels)["process"], dict(labels)["generation"]) for labels in collected} >= {
        ("worker-onnxruntime", "2"), ("supervisor", "0")}
    assert metrics.count("# TYPE process_resident_memory_bytes gauge") == 1
    assert "tensorgate_process_" not in metrics


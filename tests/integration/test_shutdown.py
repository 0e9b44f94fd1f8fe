"""Graceful shutdown: SIGTERM under load loses no accepted request.

Each test starts its own server over a repository holding the ``slow`` model. A "gate" is a
REST request whose body the test withholds: once the server has answered ``100 Continue`` the
request is accepted and being read, so the draining server keeps its listeners open until the
test sends the rest. That makes the order of events in the big test deterministic without any
sleep: every client finishes against a server that is still listening and draining.
"""

from __future__ import annotations

import argparse
import json
import re
import signal
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gateway.grpc.generated import grpc_service_pb2 as pb
from gateway.grpc.generated import grpc_service_pb2_grpc as pb_grpc
from gateway.settings import Settings, SettingsError, add_serve_arguments, settings_from
from tests import model_factory
from tests.server import ServerProcess

#: Loop iterations of the slow model per request: long enough that requests queue up behind
#: each other in its one instance (correctness never depends on how long it takes).
ITERATIONS = 100_000
REST_CLIENTS = 3
GRPC_CLIENTS = 3
#: Bound on each closed-loop client (requests are never sent forever).
MAX_REQUESTS_PER_CLIENT = 500
SHUTTING_DOWN = "shutting down"


def _body(iterations: int = ITERATIONS) -> dict[str, object]:
    return {"inputs": [
        {"name": "iterations", "shape": [1], "datatype": "INT64", "data": [iterations]},
        {"name": "x", "shape": [64, 64], "datatype": "FP32", "data": np.eye(64).ravel().tolist()},
    ]}


def _grpc_request(iterations: int = ITERATIONS) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="slow")
    request.inputs.add(name="iterations", datatype="INT64", shape=[1]).contents.int64_contents.append(iterations)
    request.inputs.add(name="x", datatype="FP32", shape=[64, 64]).contents.fp32_contents.extend(
        np.eye(64, dtype=np.float32).ravel().tolist())
    return request


@pytest.fixture()
def slow_repo(tmp_path: Path) -> Path:
    repo = tmp_path / "repo"
    repo.mkdir()
    model_factory.slow_model(repo)
    return repo


@pytest.fixture()
def server_factory(slow_repo: Path) -> Iterator[list[ServerProcess]]:
    started: list[ServerProcess] = []
    yield started
    for server in started:
        if server.process is not None and server.process.poll() is None:
            server.process.kill()
            server.process.wait()


def _start(slow_repo: Path, started: list[ServerProcess], drain_timeout: float) -> ServerProcess:
    server = ServerProcess(slow_repo, ["--drain-timeout", str(drain_timeout)])
    started.append(server)
    server.start()
    return server


class Gate:
    """A REST inference request accepted by the server whose body the test sends when it likes."""

    def __init__(self, server: ServerProcess, iterations: int = 1) -> None:
        self.body = json.dumps(_body(iterations)).encode()
        self.sock = socket.create_connection(("127.0.0.1", server.http_port), timeout=60)
        head = (f"POST /v2/models/slow/infer HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(self.body)}\r\nExpect: 100-continue\r\n\r\n")
        self.sock.sendall(head.encode())
        interim = self._read_until(b"\r\n\r\n")
        assert interim.startswith(b"HTTP/1.1 100"), interim

    def release(self) -> tuple[int, dict[str, object]]:
        """Send the body; return the final status and JSON body."""
        self.send_body()
        return self.reply()

    def send_body(self) -> None:
        self.sock.sendall(self.body)

    def reply(self) -> tuple[int, dict[str, object]]:
        head = self._read_until(b"\r\n\r\n").decode()
        status = int(head.split()[1])
        length = int(re.search(r"(?im)^content-length:\s*(\d+)", head).group(1))  # type: ignore[union-attr]
        payload = self._buffer
        while len(payload) < length:
            chunk = self.sock.recv(65536)
            assert chunk, "connection closed before the whole reply"
            payload += chunk
        self.sock.close()
        decoded: dict[str, object] = json.loads(payload[:length])
        return status, decoded

    _buffer = b""

    def _read_until(self, marker: bytes) -> bytes:
        data = self._buffer
        while marker not in data:
            chunk = self.sock.recv(65536)
            assert chunk, f"connection closed; got {data!r}"
            data += chunk
        head, _, self._buffer = data.partition(marker)
        return head + marker


@dataclass
class Client:
    """A closed-loop client: one request at a time until the server answers anything but success."""

    name: str
    outcomes: list[tuple[str, bool]] = field(default_factory=list)  # (outcome, answered after SIGTERM)
    failure: str = ""
    first_success: threading.Event = field(default_factory=threading.Event)


class Load:
    """REST and gRPC closed-loop clients against ``slow``; records every answer."""

    def __init__(self, server: ServerProcess) -> None:
        self.server = server
        self.signal_lock = threading.Lock()
        self.signalled = threading.Event()
        self.clients = ([Client(f"rest{i}") for i in range(REST_CLIENTS)]
                        + [Client(f"grpc{i}") for i in range(GRPC_CLIENTS)])
        self.threads = [threading.Thread(target=self._run, args=(c,), daemon=True) for c in self.clients]

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def terminate(self) -> None:
        """SIGTERM the server; an answer recorded after this returns came after the signal was sent."""
        assert self.server.process is not None
        with self.signal_lock:
            self.server.process.send_signal(signal.SIGTERM)
            self.signalled.set()

    def _record(self, client: Client, outcome: str) -> None:
        with self.signal_lock:
            client.outcomes.append((outcome, self.signalled.is_set()))
        if outcome == "success":
            client.first_success.set()

    def _run(self, client: Client) -> None:
        try:
            if client.name.startswith("rest"):
                self._run_rest(client)
            else:
                self._run_grpc(client)
        except Exception as exc:  # a dropped connection, a timeout: the test reports it
            client.failure = f"{type(exc).__name__}: {exc}"
        finally:
            client.first_success.set()

    def _run_rest(self, client: Client) -> None:
        with httpx.Client(base_url=self.server.http_url, timeout=120) as http:
            for _ in range(MAX_REQUESTS_PER_CLIENT):
                reply = http.post("/v2/models/slow/infer", json=_body())
                if reply.status_code == 200:
                    assert reply.json()["outputs"][0]["shape"] == [64, 64]
                    self._record(client, "success")
                    continue
                error = reply.json()["error"]
                self._record(client, "refused" if reply.status_code == 503 and SHUTTING_DOWN in error
                             else f"HTTP {reply.status_code}: {error}")
                return

    def _run_grpc(self, client: Client) -> None:
        with grpc.insecure_channel(self.server.grpc_address) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            for _ in range(MAX_REQUESTS_PER_CLIENT):
                try:
                    reply = stub.ModelInfer(_grpc_request(), timeout=120)
                except grpc.RpcError as exc:
                    code, details = exc.code(), exc.details() or ""
                    self._record(client, "refused" if code is grpc.StatusCode.UNAVAILABLE and SHUTTING_DOWN in details
                                 else f"{code.name}: {details}")
                    return
                assert list(reply.outputs[0].shape) == [64, 64]
                self._record(client, "success")


def _event_fields(log: str, event: str) -> dict[str, str]:
    match = re.search(rf"event={event}( .*)?$", log, re.MULTILINE)
    assert match, f"no event={event} in the log:\n{log}"
    return dict(re.findall(r"(\w+)=(\S+)", match.group(1) or ""))


@pytest.mark.slow
def test_sigterm_under_load_answers_every_accepted_request(slow_repo: Path,
                                                             server_factory: list[ServerProcess]) -> None:
    server = _start(slow_repo, server_factory, drain_timeout=120)
    load = Load(server)
    load.start()
    for client in load.clients:  # every client is in its loop: requests are queued and executing
        assert client.first_success.wait(timeout=120), f"{client.name} got no answer"
        assert not client.failure, f"{client.name}: {client.failure}"
    gate = Gate(server)

    load.terminate()
    for thread in load.threads:  # each client ends at its first refusal, from a server still listening
        thread.join(timeout=120)
        assert not thread.is_alive()

    # Still draining (the gate holds it open): not ready, yet alive, and refusing new work explicitly.
    assert httpx.get(f"{server.http_url}/v2/health/ready").status_code == 503
    assert httpx.get(f"{server.http_url}/v2/health/live").status_code == 200
    rest_reply = httpx.post(f"{server.http_url}/v2/models/slow/infer", json=_body(iterations=1))
    assert rest_reply.status_code == 503 and SHUTTING_DOWN in rest_reply.json()["error"]
    with grpc.insecure_channel(server.grpc_address) as channel:
        assert not pb_grpc.GRPCInferenceServiceStub(channel).ServerReady(pb.ServerReadyRequest()).ready
        health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
        assert health.status == health_pb2.HealthCheckResponse.NOT_SERVING
        with pytest.raises(grpc.RpcError) as refused:
            pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(_grpc_request(iterations=1))
        assert refused.value.code() is grpc.StatusCode.UNAVAILABLE
        assert SHUTTING_DOWN in (refused.value.details() or "")
    assert server.process is not None and server.process.poll() is None

    status, reply = gate.release()  # accepted before the drain began, reaches inference after: refused
    assert status == 503 and SHUTTING_DOWN in str(reply["error"]), reply
    assert server.process.wait(timeout=120) == 0
    log = server.log()
    assert "Traceback" not in log, log

    for client in load.clients:
        outcomes = [outcome for outcome, _ in client.outcomes]
        assert not client.failure, f"{client.name}: {client.failure} after {outcomes}"
        # 200 for everything until the drain began, then exactly one explicit refusal; nothing dropped.
        assert outcomes[-1] == "refused", (client.name, outcomes)
        assert set(outcomes[:-1]) == {"success"}, (client.name, outcomes)
    draining = _event_fields(log, "draining")
    in_flight = int(draining["in_flight"])
    assert in_flight >= 1, log  # with six clients on one model instance, work was queued at SIGTERM
    completed_after_signal = sum(outcome == "success" and after for c in load.clients for outcome, after in c.outcomes)
    assert completed_after_signal >= in_flight, (completed_after_signal, log)
    assert "event=drained" in log and "event=drain_timeout" not in log, log
    assert "event=stopped" in log, log


@pytest.mark.slow
def test_a_request_that_outlives_the_drain_timeout_still_gets_an_answer(
        slow_repo: Path, server_factory: list[ServerProcess]) -> None:
    server = _start(slow_repo, server_factory, drain_timeout=0)
    gate = Gate(server, iterations=10 * ITERATIONS)  # accepted (100 Continue): the drain has to wait for it
    gate.send_body()
    assert server.process is not None
    server.process.send_signal(signal.SIGTERM)
    status, reply = gate.reply()  # refused if the drain began first, else cut short when the workers stop
    assert status == 503, reply
    assert server.process.wait(timeout=120) == 0
    log = server.log()
    assert "event=drain_timeout" in log and "event=stopped" in log, log
    assert "Traceback" not in log, log


@pytest.mark.slow
def test_second_signal_skips_the_rest_of_the_drain(slow_repo: Path, server_factory: list[ServerProcess]) -> None:
    server = _start(slow_repo, server_factory, drain_timeout=600)
    gate = Gate(server)
    assert server.process is not None
    server.process.send_signal(signal.SIGTERM)
    # Draining once the readiness probe turns 503; then a second signal.
    for _ in range(1200):
        if httpx.get(f"{server.http_url}/v2/health/ready").status_code == 503:
            break
        time.sleep(0.05)
    else:
        pytest.fail(f"the server never turned not-ready:\n{server.log()}")
    server.process.send_signal(signal.SIGINT)
    assert server.process.wait(timeout=120) == 0
    gate.sock.close()
    log = server.log()
    assert "event=drain_skipped" in log and "event=stopped" in log, log


# --- the --drain-timeout setting ---------------------------------------------------------------------------


def _parse(*argv: str) -> Settings:
    parser = argparse.ArgumentParser()
    add_serve_arguments(parser)
    return settings_from(parser.parse_args(list(argv)))


def test_drain_timeout_defaults_to_thirty_seconds(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TENSORGATE_DRAIN_TIMEOUT", raising=False)
    assert _parse().drain_timeout == Settings().drain_timeout == 30.0


def test_drain_timeout_from_flag_and_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TENSORGATE_DRAIN_TIMEOUT", "45")
    assert _parse().drain_timeout == 45.0
    assert _parse("--drain-timeout", "2.5").drain_timeout == 2.5


@pytest.mark.parametrize("bad", ["-1", "soon", "nan", "inf"])
def test_drain_timeout_rejects_what_is_not_a_duration(bad: str) -> None:
    with pytest.raises(SettingsError, match=f"^--drain-timeout '{bad}': "):
        _parse("--drain-timeout", bad)

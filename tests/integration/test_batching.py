"""Dynamic batching on a real server: batches form under concurrency, every request gets exactly
its own answer (a property-based test over random mixes of sizes, priorities and timeouts),
timed-out and abandoned requests never execute, and a full queue rejects at once.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.grpc.generated import grpc_service_pb2 as pb
from gateway.grpc.generated import grpc_service_pb2_grpc as pb_grpc
from tests import model_factory
from tests.server import ServerProcess

pytestmark = pytest.mark.slow

#: Loop turns that keep the ``gate`` model busy for a few seconds.
GATE_TURNS = 1_000_000


@pytest.fixture(scope="module")
def batching_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    repo = tmp_path_factory.mktemp("batching") / "repo"
    repo.mkdir()
    model_factory.delay_model(repo, "delay", config=(
        "max_batch_size: 16\n"
        "dynamic_batching: {max_queue_delay_ms: 5, max_queue_size: 256, priority_levels: 2}\n"))
    model_factory.delay_model(repo, "property", config=(
        "max_batch_size: 8\n"
        "dynamic_batching: {max_queue_delay_ms: 2, max_queue_size: 256, priority_levels: 3}\n"))
    model_factory.slow_model(repo, "gate", "dynamic_batching: {max_queue_size: 2}\n")
    server = ServerProcess(repo)
    server.start()
    yield server
    assert server.stop() == 0, server.log()


def stats(server: ServerProcess, model: str) -> dict[str, Any]:
    [entry] = httpx.get(f"{server.http_url}/v2/models/{model}/stats").json()["model_stats"]
    return entry  # type: ignore[no-any-return]


def grpc_infer(stub: pb_grpc.GRPCInferenceServiceStub, model: str, x: np.ndarray,
               parameters: dict[str, int] | None = None) -> np.ndarray:
    request = pb.ModelInferRequest(model_name=model, raw_input_contents=[x.tobytes()])
    request.inputs.add(name="x", datatype="FP32", shape=list(x.shape))
    for key, value in (parameters or {}).items():
        request.parameters[key].int64_param = value
    reply = stub.ModelInfer(request)
    return np.frombuffer(reply.raw_output_contents[0], np.float32).reshape(x.shape)


def test_batches_form_at_concurrency_16(batching_server: ServerProcess) -> None:
    """16 closed-loop clients against a model that costs 5 ms per batch: most batches hold > 1 row."""
    before = stats(batching_server, "delay")
    with grpc.insecure_channel(batching_server.grpc_address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)

        def client(index: int) -> None:
            for turn in range(12):
                x = np.full((1, 4), index * 100 + turn, np.float32)
                np.testing.assert_array_equal(grpc_infer(stub, "delay", x), 2 * x)

        with ThreadPoolExecutor(16) as pool:
            list(pool.map(client, range(16)))
    after = stats(batching_server, "delay")
    executions = after["execution_count"] - before["execution_count"]
    assert after["inference_count"] - before["inference_count"] == 16 * 12
    counts = {b["batch_size"]: b["compute_infer"]["count"] for b in after["batch_stats"]}
    for b in before["batch_stats"]:
        counts[b["batch_size"]] -= b["compute_infer"]["count"]
    batched = sum(n for size, n in counts.items() if size > 1)
    assert batched > executions / 2, counts  # most executions carried more than one request's row


requests_strategy = st.lists(
    st.tuples(st.integers(1, 4), st.sampled_from([0, 1, 2, 3]), st.sampled_from([None, None, None, 1, 2000])),
    min_size=1, max_size=40,
)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(requests=requests_strategy)
def test_every_request_gets_exactly_its_own_answer(batching_server: ServerProcess,
                                                   requests: list[tuple[int, int, int | None]]) -> None:
    """Random sizes, priorities and timeouts (µs) fired at once: each reply is the model applied to
    that request's own rows, nothing is answered twice, and timed-out requests never executed."""
    before = stats(batching_server, "property")
    url = f"{batching_server.http_url}/v2/models/property/infer"

    async def one(client: httpx.AsyncClient, index: int, rows: int, priority: int,
                  timeout: int | None) -> tuple[int, int, httpx.Response, np.ndarray]:
        x = (index * 10 + np.arange(rows * 4, dtype=np.float32).reshape(rows, 4) / 8).astype(np.float32)
        parameters: dict[str, int] = {"priority": priority}
        if timeout is not None:
            parameters["timeout"] = timeout
        body = {"id": f"r{index}", "parameters": parameters,
                "inputs": [{"name": "x", "shape": [rows, 4], "datatype": "FP32", "data": x.ravel().tolist()}]}
        return index, rows, await client.post(url, json=body), x

    async def fire() -> list[tuple[int, int, httpx.Response, np.ndarray]]:
        async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=64)) as client:
            return await asyncio.gather(*(one(client, i, *r) for i, r in enumerate(requests)))

    executed_rows = 0
    for index, rows, response, x in asyncio.run(fire()):
        timeout = requests[index][2]
        if response.status_code == 200:
            body = response.json()
            assert body["id"] == f"r{index}"
            output = body["outputs"][0]
            assert output["shape"] == [rows, 4]
            np.testing.assert_array_equal(np.array(output["data"], np.float32).reshape(rows, 4), 2 * x)
            executed_rows += rows
        else:
            assert timeout is not None, response.text  # only requests with a timeout may fail
            assert response.status_code == 503 and "timed out" in response.json()["error"]
    after = stats(batching_server, "property")
    assert after["inference_count"] - before["inference_count"] == executed_rows


def _gate_body(turns: int = GATE_TURNS) -> dict[str, Any]:
    return {"inputs": [{"name": "iterations", "shape": [1], "datatype": "INT64", "data": [turns]},
                       {"name": "x", "shape": [64, 64], "datatype": "FP32", "data": [0.0] * 4096}]}


def wait_until(predicate: Callable[[], bool], what: str, limit: float = 60.0) -> None:
    """Poll ``predicate``; the limit only guards against a hang, it measures nothing."""
    deadline = time.monotonic() + limit
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"never happened: {what}")
        time.sleep(0.01)


def queue_depth(server: ServerProcess, model: str) -> int:
    for line in httpx.get(server.metrics_url).text.splitlines():
        if line.startswith(f'tensorgate_queue_depth{{model="{model}"'):
            return int(float(line.rsplit(" ", 1)[1]))
    raise AssertionError(f"no queue depth for {model}")


def test_full_queue_rejects_at_once_and_abandoned_requests_never_run(batching_server: ServerProcess) -> None:
    server = batching_server
    url = f"{server.http_url}/v2/models/gate/infer"
    before = stats(server, "gate")
    with ThreadPoolExecutor(3) as pool:
        held = pool.submit(httpx.post, url, json=_gate_body(), timeout=120)
        wait_until(lambda: stats(server, "gate")["inference_stats"]["queue"]["count"]
                   > before["inference_stats"]["queue"]["count"], "the long request leaves the queue")

        # A REST client that hangs up while its request is queued: the request leaves the queue.
        raw = httpx.Request("POST", url, json=_gate_body(1)).read()
        with socket.create_connection(("127.0.0.1", server.http_port)) as sock:
            sock.sendall(b"POST /v2/models/gate/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
                         b"\r\nContent-Length: %d\r\n\r\n" % len(raw) + raw)
            wait_until(lambda: queue_depth(server, "gate") == 1, "the REST request is queued")
        wait_until(lambda: queue_depth(server, "gate") == 0, "the abandoned REST request leaves the queue")

        with grpc.insecure_channel(server.grpc_address) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            request = pb.ModelInferRequest(model_name="gate")
            request.inputs.add(name="iterations", datatype="INT64", shape=[1]).contents.int64_contents.append(1)
            request.inputs.add(name="x", datatype="FP32", shape=[64, 64],
                               contents=pb.InferTensorContents(fp32_contents=[0.0] * 4096))
            # A gRPC client that cancels while queued.
            cancelled = stub.ModelInfer.future(request)
            wait_until(lambda: queue_depth(server, "gate") == 1, "the gRPC request is queued")
            cancelled.cancel()
            wait_until(lambda: queue_depth(server, "gate") == 0, "the cancelled gRPC request leaves the queue")

            # Fill the queue (max_queue_size 2), then overflow it over REST and gRPC.
            queued = [pool.submit(httpx.post, url, json=_gate_body(1), timeout=120) for _ in range(2)]
            wait_until(lambda: queue_depth(server, "gate") == 2, "two requests are queued")
            overflow = httpx.post(url, json=_gate_body(1))
            assert overflow.status_code == 503 and "queue is full" in overflow.json()["error"]
            with pytest.raises(grpc.RpcError) as info:
                stub.ModelInfer(request)
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE

        assert held.result().status_code == 200
        assert [f.result().status_code for f in queued] == [200, 200]
    after = stats(server, "gate")
    # The long request and the two queued ones ran; the abandoned and cancelled ones never did.
    assert after["execution_count"] - before["execution_count"] == 3

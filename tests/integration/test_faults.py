"""Faults, on a server of its own: models that fail to load, a runtime worker killed with
requests in flight, and requests at the default size limit.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import grpc
import httpx
import numpy as np
import pytest

from gateway.grpc.generated import grpc_service_pb2 as pb
from gateway.grpc.generated import grpc_service_pb2_grpc as pb_grpc
from tests import model_factory
from tests.server import ServerProcess

pytestmark = pytest.mark.slow

#: Loop iterations that keep the slow model busy for several seconds.
SLOW_ITERATIONS = 2_000_000


@pytest.fixture(scope="module")
def fault_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    repo = tmp_path_factory.mktemp("faults") / "repo"
    repo.mkdir()
    model_factory.slow_model(repo)
    model_factory.flat_identity_model(repo)
    model_factory.broken_models(repo)
    server = ServerProcess(repo)  # default limits
    server.start()
    yield server
    assert server.stop() == 0, server.log()


def _slow_body() -> dict[str, object]:
    return {"inputs": [
        {"name": "iterations", "shape": [1], "datatype": "INT64", "data": [SLOW_ITERATIONS]},
        {"name": "x", "shape": [64, 64], "datatype": "FP32", "data": np.eye(64).ravel().tolist()},
    ]}


def test_broken_models_are_reported_and_the_others_serve(fault_server: ServerProcess) -> None:
    url = fault_server.http_url
    index = {m["name"]: m for m in httpx.get(f"{url}/v2/models").json()["models"]}
    expectations = {
        "bad_config": ["config.yaml", "max_batch_size", "bogus_key"],
        "missing_file": ["missing_file/1/model.onnx", "not found"],
        "corrupt_file": ["corrupt_file/1/model.onnx"],
        "contradicts": ["contradicts/1", "INT32", "FP32"],
    }
    for name, fragments in expectations.items():
        assert index[name]["state"] == "UNAVAILABLE", index[name]
        for fragment in fragments:
            assert fragment in index[name]["reason"], (name, index[name]["reason"])
        ready = httpx.get(f"{url}/v2/models/{name}/ready")
        assert ready.status_code == 503 and ready.json()["reason"] == index[name]["reason"]
        metadata = httpx.get(f"{url}/v2/models/{name}")
        assert metadata.status_code == 503 and fragments[0] in metadata.json()["error"]
        assert f"model={name}" in fault_server.log()  # the failure is logged too
    assert httpx.get(f"{url}/v2/health/ready").status_code == 503  # not every model is ready
    assert httpx.get(f"{url}/v2/health/live").status_code == 200
    r = httpx.post(f"{url}/v2/models/flat_identity/infer",
                   json={"inputs": [{"name": "x", "shape": [2], "datatype": "FP32", "data": [1, 2]}]})
    assert r.status_code == 200 and r.json()["outputs"][0]["data"] == [1, 2]


def test_grpc_reports_a_model_that_failed_to_load(fault_server: ServerProcess) -> None:
    with grpc.insecure_channel(fault_server.grpc_address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        assert not stub.ModelReady(pb.ModelReadyRequest(name="corrupt_file")).ready
        with pytest.raises(grpc.RpcError) as info:
            stub.ModelMetadata(pb.ModelMetadataRequest(name="corrupt_file"))
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "corrupt_file/1/model.onnx" in (info.value.details() or "")


def test_64_mib_requests_pass_the_default_limits(fault_server: ServerProcess) -> None:
    x = np.random.default_rng(0).standard_normal(16 * 1024 * 1024).astype(np.float32)  # 64 MiB
    header = (b'{"inputs":[{"name":"x","shape":[%d],"datatype":"FP32","parameters":{"binary_data_size":%d}}],'
              b'"outputs":[{"name":"y","parameters":{"binary_data":true}}]}') % (x.size, x.nbytes)
    r = httpx.post(f"{fault_server.http_url}/v2/models/flat_identity/infer", content=header + x.tobytes(),
                   headers={"Inference-Header-Content-Length": str(len(header))}, timeout=60)
    assert r.status_code == 200, r.text[:200]
    length = int(r.headers["inference-header-content-length"])
    assert np.array_equal(np.frombuffer(r.content[length:], np.float32), x)
    with grpc.insecure_channel(fault_server.grpc_address, options=[
        ("grpc.max_receive_message_length", 128 * 1024 * 1024),
        ("grpc.max_send_message_length", 128 * 1024 * 1024),
    ]) as channel:
        request = pb.ModelInferRequest(model_name="flat_identity", raw_input_contents=[x.tobytes()])
        request.inputs.add(name="x", datatype="FP32", shape=[x.size])
        reply = pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=60)
        assert np.array_equal(np.frombuffer(reply.raw_output_contents[0], np.float32), x)


def test_killed_worker_fails_in_flight_requests_and_comes_back(fault_server: ServerProcess) -> None:
    """kill -9 the ONNX worker while a REST and a gRPC request run: both fail at once with
    503 / UNAVAILABLE naming the model; the server stays live, restarts the worker, reloads
    its models, and later requests succeed."""
    url = fault_server.http_url
    [pid] = fault_server.worker_pids()

    def rest_call() -> httpx.Response:
        return httpx.post(f"{url}/v2/models/slow/infer", json=_slow_body(), timeout=60)

    def grpc_call() -> grpc.StatusCode:
        with grpc.insecure_channel(fault_server.grpc_address) as channel:
            request = pb.ModelInferRequest(model_name="slow")
            request.inputs.add(name="iterations", datatype="INT64", shape=[1]).contents.int64_contents.append(
                SLOW_ITERATIONS)
            request.inputs.add(name="x", datatype="FP32", shape=[64, 64],
                               contents=pb.InferTensorContents(fp32_contents=np.eye(64).ravel().tolist()))
            try:
                pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=60)
            except grpc.RpcError as exc:
                assert "slow" in (exc.details() or "")
                return exc.code()
            return grpc.StatusCode.OK

    with ThreadPoolExecutor(2) as pool:
        rest_future = pool.submit(rest_call)
        grpc_future = pool.submit(grpc_call)
        time.sleep(1.0)  # both requests are now executing in the worker
        assert not rest_future.done() and not grpc_future.done()
        os.kill(pid, signal.SIGKILL)
        rest_reply = rest_future.result()
        grpc_code = grpc_future.result()

    # Without the worker's end-of-stream noticed, both calls would hang until their 60 s timeout.
    assert rest_reply.status_code == 503
    assert "'slow'" in rest_reply.json()["error"] and "exited" in rest_reply.json()["error"]
    assert grpc_code == grpc.StatusCode.UNAVAILABLE
    assert httpx.get(f"{url}/v2/health/live").status_code == 200
    fault_server.wait_until_ready("slow")
    fault_server.wait_until_ready("flat_identity")
    [new_pid] = fault_server.worker_pids()
    assert new_pid != pid
    r = httpx.post(f"{url}/v2/models/flat_identity/infer",
                   json={"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [5]}]})
    assert r.status_code == 200 and r.json()["outputs"][0]["data"] == [5]
    metrics = httpx.get(fault_server.metrics_url).text
    assert 'tensorgate_worker_restarts_total{framework="onnxruntime"} 1.0' in metrics
    assert "event=worker_exited" in fault_server.log()

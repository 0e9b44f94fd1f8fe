"""Faults of the TorchScript, torch.export, AOTInductor, TensorFlow and JAX runtimes, on one server of
their own: models that fail to load (missing, corrupt, contradicting their config, asking for a GPU that
is not there, compiled for another device or batch range), models that raise while executing, JAX
compilations while serving, and each framework's worker killed with requests in flight.
"""

from __future__ import annotations

import os
import re
import signal
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest

from gateway.grpc.generated import grpc_service_pb2 as pb
from gateway.grpc.generated import grpc_service_pb2_grpc as pb_grpc
from tests import framework_models as fm
from tests.helpers import MACHINE_SKIP, assert_broken_models_reported
from tests.server import ServerProcess

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def framework_server(tmp_path_factory: pytest.TempPathFactory, aoti_package: Path) -> Iterator[ServerProcess]:
    repo = tmp_path_factory.mktemp("framework_faults") / "repo"
    repo.mkdir()
    fm.tensorflow_models(repo)
    fm.slow_torchscript(repo)
    fm.slow_jax(repo)
    fm.failing_torchscript(repo)
    fm.failing_torch_export(repo)
    fm.doubling_jax(repo)
    fm.dynamic_jax(repo)
    fm.broken_torch_models(repo)
    fm.broken_jax_models(repo)
    fm.gpu_models(repo)
    fm.aoti_models(repo, aoti_package)
    server = ServerProcess(repo)
    server.start(timeout=120)
    yield server
    assert server.stop() == 0, server.log()
    assert not re.search(r"^Traceback \(most recent call last\)", server.log(), re.M), server.log()


def _infer(server: ServerProcess, model: str, inputs: list[dict[str, object]], timeout: float = 60) -> httpx.Response:
    return httpx.post(f"{server.http_url}/v2/models/{model}/infer", json={"inputs": inputs}, timeout=timeout)


def _x(values: list[float]) -> dict[str, object]:
    return {"name": "x", "shape": [1, len(values)], "datatype": "FP32", "data": values}


#: Model -> fragments its not-ready reason must contain: the file first.
BROKEN = {
    "missing_torchscript": ["missing_torchscript/1/model.pt", "not found"],
    "corrupt_torchscript": ["corrupt_torchscript/1/model.pt", "not a TorchScript model"],
    "contradicts_torchscript": ["contradicts_torchscript/1/model.pt", "takes 1 input", "lists 2"],
    "missing_torch_export": ["missing_torch_export/1/model.pt2", "not found"],
    "corrupt_torch_export": ["corrupt_torch_export/1/model.pt2", "not a torch.export program"],
    "contradicts_torch_export": ["contradicts_torch_export/1", "'x'", "FP32", "INT32"],
    "missing_savedmodel": ["missing_savedmodel/1/model.savedmodel", "not found"],
    "corrupt_savedmodel": ["corrupt_savedmodel/1/model.savedmodel", "not a loadable SavedModel"],
    "contradicts_savedmodel": ["contradicts_savedmodel/1", "'x'", "FP32", "INT32"],
    "missing_jax": ["missing_jax/1/model.jax", "not found"],
    "corrupt_jax": ["corrupt_jax/1/model.jax", "not a jax.export serialization"],
    "contradicts_jax": ["contradicts_jax/1", "'x'", "FP32", "INT32"],
    "no_params_jax": ["no_params_jax/1/params.npz", "not found"],
    "small_range_aoti": ["small_range_aoti/1/model.pt2", "compiled for batch 2..8 but max_batch_size is 16"],
    "contradicts_aoti": ["contradicts_aoti/1", "'x'", "FP32", "INT32"],
    "wide_aoti": ["wide_aoti/1", "'x'", "shape [4] in the model but [5] in the config"],
    "two_outputs_aoti": ["two_outputs_aoti/1/model.pt2", "returns 1 output(s), but the config lists 2"],
    "cuda_package_aoti": ["cuda_package_aoti/1/model.pt2", "compiled for cuda, but the instance runs on cpu"],
    "truncated_aoti": ["truncated_aoti/1/model.pt2", "not a usable AOTInductor package"],
    "garbage_aoti": ["garbage_aoti/1/model.pt2", "not a usable AOTInductor package", "not a zip file"],
    "export_as_aoti": ["export_as_aoti/1/model.pt2", "not an AOTInductor package", "platform torch_export"],
}


def test_broken_models_are_reported_by_file_and_the_others_serve(framework_server: ServerProcess) -> None:
    assert_broken_models_reported(framework_server.http_url, BROKEN)
    for model in ("failing_torchscript", "failing_torch_export", "failing_savedmodel", "doubling_jax", "doubling_aoti"):
        r = _infer(framework_server, model, [_x([1, 2, 3, 4])])
        assert r.status_code == 200, r.text
        assert r.json()["outputs"][0]["data"] == [2, 4, 6, 8]


@pytest.mark.skipif(Path("/dev/nvidia0").exists(), reason=MACHINE_SKIP)
def test_a_missing_gpu_is_a_clear_load_error(framework_server: ServerProcess) -> None:
    index = {m["name"]: m for m in httpx.get(f"{framework_server.http_url}/v2/models").json()["models"]}
    for framework, name in (("torch", "gpu_torchscript"), ("torch", "gpu_torch_export"), ("torch", "gpu_aoti"),
                            ("TensorFlow", "gpu_savedmodel"), ("jax", "gpu_jax")):
        assert index[name]["state"] == "UNAVAILABLE"
        assert "device cuda:0 requested" in index[name]["reason"], index[name]
        assert framework in index[name]["reason"], index[name]


def test_aoti_serves_every_batch_size_in_its_range_and_refuses_what_does_not_fit(
        framework_server: ServerProcess) -> None:
    """doubling_aoti was compiled for batch 2..8: a batch of one is padded to two and cut back, and
    batches up to max_batch_size run as they are. A wrong shape or dtype is the gateway's 400."""
    for rows in (1, 2, 8):
        x = np.arange(rows * 4, dtype=np.float32).reshape(rows, 4)
        r = _infer(framework_server, "doubling_aoti", [{"name": "x", "shape": [rows, 4], "datatype": "FP32",
                                                        "data": x.ravel().tolist()}])
        assert r.status_code == 200, r.text
        output = r.json()["outputs"][0]
        assert output["shape"] == [rows, 4] and output["data"] == (2 * x).ravel().tolist()
    for tensor, fragment in (({"shape": [1, 5], "datatype": "FP32", "data": [0.0] * 5}, "shape [1, 5]"),
                             ({"shape": [1, 4], "datatype": "INT32", "data": [0] * 4}, "datatype INT32"),
                             ({"shape": [9, 4], "datatype": "FP32", "data": [0.0] * 36}, "9")):
        r = _infer(framework_server, "doubling_aoti", [{"name": "x", **tensor}])
        assert r.status_code == 400 and "input 'x'" in r.json()["error"] and fragment in r.json()["error"], r.text


@pytest.mark.parametrize(("model", "message"), [
    ("failing_torchscript", fm.REFUSAL),
    ("failing_torch_export", "Runtime assertion failed"),
    ("failing_savedmodel", fm.REFUSAL),
])
def test_a_model_that_raises_fails_its_batch_and_the_worker_serves_on(framework_server: ServerProcess,
                                                                       model: str, message: str) -> None:
    pids = framework_server.worker_pids()
    r = _infer(framework_server, model, [_x([1, -2, 3, 4])])
    assert r.status_code == 500, r.text
    assert f"model '{model}' failed while executing" in r.json()["error"] and message in r.json()["error"]
    with grpc.insecure_channel(framework_server.grpc_address) as channel:
        request = pb.ModelInferRequest(model_name=model)
        request.inputs.add(name="x", datatype="FP32", shape=[1, 4],
                           contents=pb.InferTensorContents(fp32_contents=[-1, 0, 0, 0]))
        with pytest.raises(grpc.RpcError) as info:
            pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request)
        assert info.value.code() == grpc.StatusCode.INTERNAL and message in (info.value.details() or "")
    r = _infer(framework_server, model, [_x([1, 2, 3, 4])])
    assert r.status_code == 200 and r.json()["outputs"][0]["data"] == [2, 4, 6, 8]
    assert framework_server.worker_pids() == pids  # nobody crashed


def test_jax_counts_its_compilations(framework_server: ServerProcess) -> None:
    """Batched JAX models compile every bucket at load; a model whose length is symbolic compiles
    each new length once while serving, and the worker logs each such compilation."""
    log = framework_server.log()
    assert re.search(r"event=jax_warmed model=doubling_jax version=1 buckets=1,2,4,8 compiles=4 ", log), log
    for rows in (1, 3, 8, 5):
        r = _infer(framework_server, "doubling_jax", [{"name": "x", "shape": [rows, 4], "datatype": "FP32",
                                                        "data": list(range(rows * 4))}])
        assert r.status_code == 200 and r.json()["outputs"][0]["data"] == [2 * v for v in range(rows * 4)]
    for length in (3, 5, 3, 5, 3):
        r = _infer(framework_server, "dynamic_jax", [{"name": "x", "shape": [length], "datatype": "FP32",
                                                       "data": [1.0] * length}])
        assert r.status_code == 200 and r.json()["outputs"][0]["data"] == [2.0] * length
    log = framework_server.log()
    assert log.count("event=jax_compile phase=serving model=dynamic_jax") == 2, log  # lengths 3 and 5, once each
    assert "event=jax_compile phase=serving model=doubling_jax" not in log


def _worker_pid(server: ServerProcess, framework: str) -> int:
    [pid] = [p for p in server.worker_pids()
             if Path(f"/proc/{p}/cmdline").read_bytes().split(b"\0")[3] == framework.encode()]
    return pid


#: framework -> (its slow model, the iterations datatype it takes, a model of it that answers quickly)
KILLED = {
    "torch": ("slow_torchscript", "INT64", "failing_torchscript"),
    "tensorflow": ("slow_savedmodel", "INT64", "failing_savedmodel"),
    "jax": ("slow_jax", "INT32", "doubling_jax"),
}


@pytest.mark.parametrize("framework", list(KILLED))
def test_killed_worker_fails_in_flight_requests_and_comes_back(framework_server: ServerProcess,
                                                               framework: str) -> None:
    """kill -9 one framework's worker while a REST and a gRPC request run in it: both fail at once
    with 503 / UNAVAILABLE naming the model; the worker restarts, its models reload, and later
    requests succeed."""
    slow, iterations_type, quick = KILLED[framework]
    url = framework_server.http_url
    pid = _worker_pid(framework_server, framework)
    eye = np.eye(64, dtype=np.float32).ravel().tolist()

    def rest_call() -> httpx.Response:
        return _infer(framework_server, slow, [
            {"name": "iterations", "shape": [1], "datatype": iterations_type, "data": [fm.ENDLESS]},
            {"name": "x", "shape": [64, 64], "datatype": "FP32", "data": eye}])

    def grpc_call() -> grpc.RpcError | None:
        with grpc.insecure_channel(framework_server.grpc_address) as channel:
            request = pb.ModelInferRequest(model_name=slow)
            iterations = request.inputs.add(name="iterations", datatype=iterations_type, shape=[1])
            if iterations_type == "INT64":
                iterations.contents.int64_contents.append(fm.ENDLESS)
            else:
                iterations.contents.int_contents.append(fm.ENDLESS)
            request.inputs.add(name="x", datatype="FP32", shape=[64, 64],
                               contents=pb.InferTensorContents(fp32_contents=eye))
            try:
                pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=60)
            except grpc.RpcError as exc:
                return exc
            return None

    with ThreadPoolExecutor(2) as pool:
        rest_future = pool.submit(rest_call)
        grpc_future = pool.submit(grpc_call)
        time.sleep(1.0)  # both requests are now executing in the worker
        assert not rest_future.done() and not grpc_future.done()
        os.kill(pid, signal.SIGKILL)
        rest_reply = rest_future.result()
        grpc_error = grpc_future.result()

    assert rest_reply.status_code == 503, rest_reply.text
    assert f"'{slow}'" in rest_reply.json()["error"] and "exited" in rest_reply.json()["error"]
    assert grpc_error is not None and grpc_error.code() == grpc.StatusCode.UNAVAILABLE
    assert slow in (grpc_error.details() or "")
    assert httpx.get(f"{url}/v2/health/live").status_code == 200
    framework_server.wait_until_ready(slow, timeout=60)
    framework_server.wait_until_ready(quick, timeout=60)
    assert _worker_pid(framework_server, framework) != pid
    r = _infer(framework_server, quick, [_x([1, 2, 3, 4])])
    assert r.status_code == 200 and r.json()["outputs"][0]["data"] == [2, 4, 6, 8]
    r = _infer(framework_server, slow, [
        {"name": "iterations", "shape": [1], "datatype": iterations_type, "data": [0]},
        {"name": "x", "shape": [64, 64], "datatype": "FP32", "data": eye}])
    assert r.status_code == 200 and r.json()["outputs"][0]["data"] == eye
    metrics = httpx.get(framework_server.metrics_url).text
    assert f'tensorgate_worker_restarts_total{{framework="{framework}"}} 1.0' in metrics

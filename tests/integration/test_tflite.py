"""The TFLite runtime on a server of its own: dynamic and fixed batches, instances that never mix
rows, int8 models served as FP32 or raw, models that fail to load, requests that do not fit, and
its worker killed with a request in flight.
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
from ai_edge_litert.interpreter import Interpreter

from gateway.grpc.generated import grpc_service_pb2 as pb
from gateway.grpc.generated import grpc_service_pb2_grpc as pb_grpc
from tests import framework_models as fm
from tests.helpers import assert_broken_models_reported
from tests.server import ServerProcess

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tflite") / "repo"
    root.mkdir()
    fm.tflite_models(root)
    return root


@pytest.fixture(scope="module")
def tflite_server(repo: Path) -> Iterator[ServerProcess]:
    server = ServerProcess(repo)
    server.start(timeout=120)
    yield server
    assert server.stop() == 0, server.log()
    assert not re.search(r"^Traceback \(most recent call last\)", server.log(), re.M), server.log()


def _infer(server: ServerProcess, model: str, x: np.ndarray, datatype: str = "FP32") -> httpx.Response:
    tensor = {"name": "x", "shape": list(x.shape), "datatype": datatype, "data": x.ravel().tolist()}
    return httpx.post(f"{server.http_url}/v2/models/{model}/infer", json={"inputs": [tensor]}, timeout=60)


def _y(response: httpx.Response, dtype: type = np.float32) -> np.ndarray:
    assert response.status_code == 200, response.text
    output = response.json()["outputs"][0]
    return np.array(output["data"], dtype=dtype).reshape(output["shape"])


def _rows(rows: int, offset: float = 0.0) -> np.ndarray:
    return (np.arange(rows * 4, dtype=np.float32).reshape(rows, 4) / 4 - 3 + offset).astype(np.float32)


#: Model -> fragments its not-ready reason must contain: the file first.
BROKEN = {
    "missing_tflite": ["missing_tflite/1/model.tflite", "not found"],
    "garbage_tflite": ["garbage_tflite/1/model.tflite", "not a loadable TFLite model", "not a valid Flatbuffer"],
    "truncated_tflite": ["truncated_tflite/1/model.tflite", "not a loadable TFLite model"],
    "empty_tflite": ["empty_tflite/1/model.tflite", "not a loadable TFLite model"],
    "contradicts_tflite": ["contradicts_tflite/1", "'x'", "FP32", "INT32"],
    "gpu_tflite": ["gpu_tflite/1/model.tflite", "device cuda:0 requested", "use device: cpu"],
}


def test_broken_models_are_reported_by_file_and_the_others_serve(tflite_server: ServerProcess) -> None:
    index = assert_broken_models_reported(tflite_server.http_url, BROKEN)
    for model in ("doubling_tflite", "fixed_batch_tflite", "int8_tflite", "raw_int8_tflite"):
        assert index[model]["state"] == "READY", index[model]


@pytest.mark.parametrize("model", ["doubling_tflite", "fixed_batch_tflite"])
def test_every_batch_size_up_to_the_maximum_is_served(tflite_server: ServerProcess, model: str) -> None:
    """The fixed-batch model (converted for exactly 3 rows) runs in pieces of 3, the last one padded."""
    metadata = httpx.get(f"{tflite_server.http_url}/v2/models/{model}").json()
    assert metadata["platform"] == "tflite"
    assert metadata["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}], metadata
    for rows in range(1, 9):
        x = _rows(rows)
        np.testing.assert_array_equal(_y(_infer(tflite_server, model, x)), 2 * x)


@pytest.mark.parametrize("model", ["doubling_tflite", "fixed_batch_tflite"])
def test_concurrent_requests_get_their_own_rows(tflite_server: ServerProcess, model: str) -> None:
    """Many clients at once, batched together and run on two interpreters: each reply is its own."""

    def one(i: int) -> bool:
        x = _rows(1 + i % 5, offset=i)
        return bool(np.array_equal(_y(_infer(tflite_server, model, x)), 2 * x))

    with ThreadPoolExecutor(16) as pool:
        assert all(pool.map(one, range(200)))


def _quantization(repo: Path) -> tuple[tuple[float, int], tuple[float, int]]:
    interpreter = Interpreter(model_path=str(repo / "int8_tflite" / "1" / "model.tflite"))
    return interpreter.get_input_details()[0]["quantization"], interpreter.get_output_details()[0]["quantization"]


def test_int8_model_serves_floats_or_its_raw_integers(tflite_server: ServerProcess, repo: Path) -> None:
    """int8_tflite quantizes the FP32 input and dequantizes the output with the model's parameters;
    raw_int8_tflite (raw_quantized: true) takes and gives the INT8 tensors, with the same results."""
    url = tflite_server.http_url
    assert httpx.get(f"{url}/v2/models/int8_tflite").json()["inputs"][0]["datatype"] == "FP32"
    raw_metadata = httpx.get(f"{url}/v2/models/raw_int8_tflite").json()
    assert [t["datatype"] for t in raw_metadata["inputs"] + raw_metadata["outputs"]] == ["INT8", "INT8"]
    (in_scale, in_zero), (out_scale, out_zero) = _quantization(repo)
    x = _rows(7)  # -3 to 3.75: inside the range the model was calibrated for (-4 to 4)
    served = _y(_infer(tflite_server, "int8_tflite", x))
    np.testing.assert_allclose(served, 2 * x, rtol=0, atol=out_scale)
    q = np.clip(np.round(x / in_scale) + in_zero, -128, 127).astype(np.int8)
    raw = _y(_infer(tflite_server, "raw_int8_tflite", q, "INT8"), np.int8)
    np.testing.assert_array_equal((raw.astype(np.float32) - out_zero) * np.float32(out_scale), served)


@pytest.mark.parametrize(("model", "datatype", "shape", "fragment"), [
    ("doubling_tflite", "INT32", [1, 4], "datatype INT32"),
    ("doubling_tflite", "FP32", [1, 3], "shape [1, 3]"),
    ("fixed_batch_tflite", "FP32", [4], "shape [4]"),
    ("int8_tflite", "INT8", [1, 4], "datatype INT8"),
    ("raw_int8_tflite", "FP32", [1, 4], "datatype FP32"),
])
def test_a_request_that_does_not_fit_is_400_naming_the_input(tflite_server: ServerProcess, model: str,
                                                              datatype: str, shape: list[int], fragment: str) -> None:
    x = np.zeros(shape, dtype={"FP32": np.float32, "INT32": np.int32, "INT8": np.int8}[datatype])
    r = _infer(tflite_server, model, x, datatype)
    assert r.status_code == 400, r.text
    assert "input 'x'" in r.json()["error"] and fragment in r.json()["error"], r.text
    with grpc.insecure_channel(tflite_server.grpc_address) as channel:
        request = pb.ModelInferRequest(model_name=model, raw_input_contents=[x.tobytes()])
        request.inputs.add(name="x", datatype=datatype, shape=shape)
        with pytest.raises(grpc.RpcError) as info:
            pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "input 'x'" in (info.value.details() or "")


def _worker_pid(server: ServerProcess) -> int:
    [pid] = [p for p in server.worker_pids() if Path(f"/proc/{p}/cmdline").read_bytes().split(b"\0")[3] == b"tflite"]
    return pid


def _slow(server: ServerProcess, iterations: int) -> httpx.Response:
    eye = np.eye(64, dtype=np.float32).ravel().tolist()
    return httpx.post(f"{server.http_url}/v2/models/slow_tflite/infer", timeout=60, json={"inputs": [
        {"name": "iterations", "shape": [1], "datatype": "INT32", "data": [iterations]},
        {"name": "x", "shape": [64, 64], "datatype": "FP32", "data": eye}]})


def test_killed_worker_fails_in_flight_requests_and_comes_back(tflite_server: ServerProcess) -> None:
    """kill -9 the TFLite worker while a request runs in it: the request fails at once with 503 naming
    the model; the worker restarts, its models reload, and the next requests succeed."""
    pid = _worker_pid(tflite_server)
    with ThreadPoolExecutor(1) as pool:
        in_flight = pool.submit(_slow, tflite_server, fm.ENDLESS)
        time.sleep(1.0)  # the request is now executing in the worker
        assert not in_flight.done()
        os.kill(pid, signal.SIGKILL)
        reply = in_flight.result()
    assert reply.status_code == 503, reply.text
    assert "'slow_tflite'" in reply.json()["error"] and "exited" in reply.json()["error"]
    for model in ("slow_tflite", "doubling_tflite", "int8_tflite"):
        tflite_server.wait_until_ready(model, timeout=60)
    assert _worker_pid(tflite_server) != pid
    assert _slow(tflite_server, 0).json()["outputs"][0]["data"] == np.eye(64).ravel().tolist()
    x = _rows(3)
    np.testing.assert_array_equal(_y(_infer(tflite_server, "doubling_tflite", x)), 2 * x)
    metrics = httpx.get(tflite_server.metrics_url).text
    assert 'tensorgate_worker_restarts_total{framework="tflite"} 1.0' in metrics

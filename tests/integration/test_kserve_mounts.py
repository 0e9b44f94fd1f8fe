"""TensorGate as KServe runs it: each format's model laid out in a "/mnt/models" as KServe's storage
initializer lays it out, the server started with the ClusterServingRuntime's own args (rendered for
the format's InferenceService example), and called with the KServe v2 calls KServe's docs show.

The storage initializer (kserve-storage 0.21, ``Storage._download_local``, used for local and PVC
paths) symlinks each entry of the storageUri's folder into /mnt/models; object stores copy the same
entries. ``_initialize`` does the former.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import pytest

from gateway.grpc.generated import grpc_service_pb2 as pb
from gateway.grpc.generated import grpc_service_pb2_grpc as pb_grpc
from tests import kserve_manifests as km
from tests.helpers import ROOT, load_script, run_client_script
from tests.server import ServerProcess

pytestmark = pytest.mark.slow

#: What a user uploads to the storageUri of each format's example, from the built digits repository.
Upload = Callable[[Path, Path], None]


def _onnx(repo: Path, bucket: Path) -> None:
    shutil.copy(repo / "digits_onnx" / "1" / "model.onnx", bucket / "model.onnx")


def _torchscript(repo: Path, bucket: Path) -> None:
    shutil.copy(repo / "digits_torchscript" / "1" / "model.pt", bucket / "model.pt")
    shutil.copy(repo / "digits_torchscript" / "config.yaml", bucket / "config.yaml")


def _savedmodel(repo: Path, bucket: Path) -> None:
    """TF Serving's layout, which KServe's TensorFlow examples use: a numeric version folder holding the SavedModel."""
    shutil.copytree(repo / "digits_savedmodel" / "1" / "model.savedmodel", bucket / "0001")


def _jax(repo: Path, bucket: Path) -> None:
    for name in ("model.jax", "params.npz"):
        shutil.copy(repo / "digits_jax" / "1" / name, bucket / name)


UPLOADS: dict[str, Upload] = {"onnx": _onnx, "pytorch": _torchscript, "tensorflow": _savedmodel, "jax": _jax}
PLATFORMS = {"onnx": "onnxruntime_onnx", "pytorch": "pytorch_libtorch", "tensorflow": "tensorflow_savedmodel",
             "jax": "jax_export"}


@dataclass(frozen=True)
class Digits:
    """The example digits models in four formats, a few test rows, and the logits numpy computes."""

    repo: Path
    rows: np.ndarray
    forward: Callable[[np.ndarray], np.ndarray]


@pytest.fixture(scope="module")
def digits(shared_repo: Path) -> Digits:
    """The shared test repository's digits models (the example repository's, built once per session)."""
    build = load_script("build_model_repo")
    model = build.train_digits_mlp()
    x_test, _ = build.digits_test_split()
    return Digits(shared_repo, np.asarray(x_test[:3], dtype=np.float32), lambda x: build.numpy_forward(model, x))


def _initialize(bucket: Path, mount: Path) -> None:
    """What the storage initializer does with a local storageUri: one symlink per entry of the folder."""
    mount.mkdir()
    for entry in sorted(bucket.iterdir()):
        (mount / entry.name).symlink_to(entry)


def start_isvc(fmt: str, digits_repo: Path, tmp_path: Path) -> tuple[ServerProcess, dict[str, Any]]:
    """The server KServe would run for ``fmt``'s InferenceService example."""
    isvc = km.load(km.INFERENCE_SERVICES[fmt])
    bucket = tmp_path / "bucket"
    bucket.mkdir()
    UPLOADS[fmt.removesuffix("-grpc")](digits_repo, bucket)
    mount = tmp_path / "mnt-models"
    _initialize(bucket, mount)
    return _start(isvc, mount), isvc


def _start(isvc: dict[str, Any], mount: Path) -> ServerProcess:
    """The server started with the runtime's args for ``isvc``, on ``mount`` and free loopback ports."""
    server = ServerProcess(mount)
    ports = {km.HTTP_PORT: server.http_port, km.GRPC_PORT: server.grpc_port, km.METRICS_PORT: server.metrics_port}
    server.extra_args = km.container_args(isvc, mount, ports)
    server.start(timeout=120)
    return server


@pytest.fixture
def isvc_server(request: pytest.FixtureRequest, digits: Digits,
                tmp_path: Path) -> Iterator[tuple[ServerProcess, dict[str, Any]]]:
    server, isvc = start_isvc(request.param, digits.repo, tmp_path)
    yield server, isvc
    assert server.stop() == 0, server.log()
    assert "Traceback" not in server.log(), server.log()


@pytest.mark.parametrize("isvc_server", list(UPLOADS), indirect=True)
def test_kserve_layout_answers_the_v2_calls_kserve_documents(
        isvc_server: tuple[ServerProcess, dict[str, Any]], digits: Digits) -> None:
    server, isvc = isvc_server
    name, fmt = isvc["metadata"]["name"], isvc["spec"]["predictor"]["model"]["modelFormat"]["name"]
    rows, expected = digits.rows, digits.forward(digits.rows)
    probe = km.runtime_container(km.load(km.RUNTIME))["readinessProbe"]["httpGet"]
    assert probe["port"] == km.HTTP_PORT
    assert httpx.get(f"{server.http_url}{probe['path']}").status_code == 200
    assert httpx.get(f"{server.http_url}/v2/health/live").status_code == 200
    assert httpx.get(f"{server.http_url}/v2/models/{name}/ready").status_code == 200
    metadata = httpx.get(f"{server.http_url}/v2/models/{name}").json()
    assert metadata["name"] == name and metadata["platform"] == PLATFORMS[fmt], metadata
    assert metadata["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 64]}], metadata
    # The request of KServe's v2 docs (an id, the inputs, the outputs asked for), for this model.
    body = {"id": "42", "inputs": [{"name": "input", "shape": [3, 64], "datatype": "FP32",
                                    "data": rows.ravel().tolist()}], "outputs": [{"name": "logits"}]}
    reply = httpx.post(f"{server.http_url}/v2/models/{name}/infer", json=body)
    assert reply.status_code == 200, reply.text
    answer = reply.json()
    assert answer["id"] == "42" and answer["model_name"] == name, answer
    output = answer["outputs"][0]
    assert output["name"] == "logits" and output["shape"] == [3, 10]
    np.testing.assert_allclose(np.array(output["data"]).reshape(3, 10), expected, rtol=0, atol=1e-4)
    with grpc.insecure_channel(server.grpc_address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        assert stub.ServerLive(pb.ServerLiveRequest()).live
        assert stub.ServerReady(pb.ServerReadyRequest()).ready
        assert stub.ModelReady(pb.ModelReadyRequest(name=name)).ready
        assert stub.ModelMetadata(pb.ModelMetadataRequest(name=name)).platform == PLATFORMS[fmt]
        request = pb.ModelInferRequest(model_name=name, id="42", raw_input_contents=[rows.tobytes()])
        request.inputs.add(name="input", datatype="FP32", shape=[3, 64])
        infer = stub.ModelInfer(request)
        assert infer.model_name == name and infer.id == "42"
        np.testing.assert_allclose(np.frombuffer(infer.raw_output_contents[0], np.float32).reshape(3, 10),
                                   expected, rtol=0, atol=1e-4)


#: KServe's Python SDK lives in a venv of its own (its pins clash with ours): `make kserve-sdk` makes it.
KSERVE_PYTHON = ROOT / ".venv-kserve" / "bin" / "python"


def test_kserve_sdk_clients_over_rest_and_grpc(digits: Digits, tmp_path: Path) -> None:
    """The `kserve` SDK's InferenceRESTClient and InferenceGRPCClient against the gRPC example's server:
    health, readiness, metadata, and infer with JSON and binary tensors over both protocols."""
    if not KSERVE_PYTHON.exists():
        pytest.fail(f"{KSERVE_PYTHON} is missing: run `make kserve-sdk` (the KServe SDK's own venv)")
    server, isvc = start_isvc("onnx-grpc", digits.repo, tmp_path)
    try:
        name = isvc["metadata"]["name"]
        result = run_client_script(Path(__file__).with_name("kserve_sdk_checks.py"), server.http_url,
                                   server.grpc_address, name, python=str(KSERVE_PYTHON))
    finally:
        assert server.stop() == 0, server.log()
    expected = digits.forward(np.array(result["rows"], dtype=np.float32))
    for protocol in ("rest", "grpc"):
        checks = result[protocol]
        assert checks["live"] and checks["ready"] and checks["model_ready"], checks
        for binary in (False, True):
            answer = checks[f"infer_binary_{binary}"]
            assert answer["id"] == f"sdk-{int(binary)}" and answer["model_name"] == name, answer
            np.testing.assert_allclose(np.array(answer["logits"]), expected, rtol=0, atol=1e-4)
    assert result["grpc"]["metadata"] == {"name": name, "platform": "onnxruntime_onnx",
                                          "inputs": [["input", "FP32", [-1, 64]]],
                                          "outputs": [["logits", "FP32", [-1, 10]]]}


def test_a_triton_repository_storage_uri_is_served_as_a_repository(digits: Digits, tmp_path: Path) -> None:
    """A storageUri pointing at a Triton-style repository (model folders with config and versions), as
    KServe's Triton runtime expects: every folder is served under its own name, as Triton serves it."""
    bucket = tmp_path / "bucket"
    bucket.mkdir()
    shutil.copytree(digits.repo / "digits_onnx", bucket / "digits_onnx")
    mount = tmp_path / "mnt-models"
    _initialize(bucket, mount)
    server = _start(km.load(km.INFERENCE_SERVICES["onnx"]), mount)
    try:
        assert httpx.get(f"{server.http_url}/v2/health/ready").status_code == 200
        tensor = {"name": "input", "shape": [3, 64], "datatype": "FP32", "data": digits.rows.ravel().tolist()}
        body = {"inputs": [tensor]}
        reply = httpx.post(f"{server.http_url}/v2/models/digits_onnx/infer", json=body)
        assert reply.status_code == 200, reply.text
        np.testing.assert_allclose(np.array(reply.json()["outputs"][0]["data"]).reshape(3, 10),
                                   digits.forward(digits.rows), rtol=0, atol=1e-4)
        assert "event=mounted_repository" in server.log() and "models=digits_onnx" in server.log()
    finally:
        assert server.stop() == 0, server.log()

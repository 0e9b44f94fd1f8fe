"""A Triton model repository, unmodified (config.pbtxt, Triton's file names and tensor names),
served by the real server: ONNX, TorchScript and SavedModel answer over REST, and a folder
without a config, or with a config that asks for something unsupported, is reported
UNAVAILABLE with the reason instead of being skipped.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import httpx
import numpy as np
import pytest

from tests import triton_models as tm
from tests.server import ServerProcess

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def triton_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    repo = tmp_path_factory.mktemp("triton") / "model_repository"
    repo.mkdir()
    tm.onnx_model(repo)
    tm.torchscript_model(repo)
    tm.savedmodels(repo)
    tm.refused_and_bare_models(repo)
    server = ServerProcess(repo)
    server.start(timeout=120)
    yield server
    assert server.stop() == 0, server.log()
    assert not re.search(r"^Traceback \(most recent call last\)", server.log(), re.M), server.log()


X = np.arange(12, dtype=np.float32).reshape(3, 4) / 4
B = np.full((3, 4), 0.5, dtype=np.float32)
AFFINE = X @ tm.WEIGHTS + tm.BIAS


def _tensor(name: str, array: np.ndarray) -> dict[str, object]:
    return {"name": name, "datatype": "FP32", "shape": list(array.shape), "data": array.reshape(-1).tolist()}


def _infer(server: ServerProcess, model: str, *inputs: dict[str, object]) -> dict[str, np.ndarray]:
    r = httpx.post(f"{server.http_url}/v2/models/{model}/infer", json={"inputs": list(inputs)}, timeout=60)
    assert r.status_code == 200, r.text
    return {o["name"]: np.array(o["data"], np.float32).reshape(o["shape"]) for o in r.json()["outputs"]}


def test_onnx(triton_server: ServerProcess) -> None:
    outputs = _infer(triton_server, "simple_onnx", _tensor("INPUT0", X))
    np.testing.assert_allclose(outputs["OUTPUT0"], AFFINE, rtol=0, atol=1e-5)


def test_torchscript_tensors_bind_by_the_index_in_their_names(triton_server: ServerProcess) -> None:
    outputs = _infer(triton_server, "simple_torchscript", _tensor("INPUT__1", B), _tensor("INPUT__0", X))
    projected = X @ tm.WEIGHTS
    np.testing.assert_allclose(outputs["OUTPUT__0"], projected + B, rtol=0, atol=1e-5)
    np.testing.assert_allclose(outputs["OUTPUT__1"], projected - B, rtol=0, atol=1e-5)
    metadata = httpx.get(f"{triton_server.http_url}/v2/models/simple_torchscript").json()
    assert [t["name"] for t in metadata["inputs"]] == ["INPUT__0", "INPUT__1"]
    assert metadata["platform"] == "pytorch_libtorch"


@pytest.mark.parametrize("model", ["simple_savedmodel", "named_savedmodel"])
def test_savedmodel(triton_server: ServerProcess, model: str) -> None:
    outputs = _infer(triton_server, model, _tensor("x", X))
    np.testing.assert_allclose(outputs["y"], AFFINE, rtol=0, atol=1e-5)


def test_config_pbtxt_settings_reach_the_server(triton_server: ServerProcess) -> None:
    config = httpx.get(f"{triton_server.http_url}/v2/models/simple_torchscript/config").json()
    assert config["max_batch_size"] == 8
    assert config["instance_group"][0]["count"] == 2 and config["instance_group"][0]["kind"] == "KIND_CPU"
    assert config["parameters"]["intra_op_threads"] == {"string_value": "1"}
    onnx = httpx.get(f"{triton_server.http_url}/v2/models/simple_onnx/config").json()
    assert onnx["dynamic_batching"]["max_queue_delay_microseconds"] == 100
    # Triton's own platform and backend names, so tools written for Triton read them.
    assert (config["platform"], config["backend"]) == ("pytorch_libtorch", "pytorch")
    assert (onnx["platform"], onnx["backend"]) == ("onnxruntime_onnx", "onnxruntime")


@pytest.mark.parametrize(("model", "fragments"), [
    ("no_config", ["no_config: no config.yaml or config.pbtxt in the model folder"]),
    ("refused", ["refused/config.pbtxt: input['INPUT0'].reshape: ", "not supported"]),
])
def test_unusable_folders_are_unavailable_with_the_reason(triton_server: ServerProcess, model: str,
                                                          fragments: list[str]) -> None:
    index = {m["name"]: m for m in httpx.get(f"{triton_server.http_url}/v2/models").json()["models"]}
    assert index[model]["state"] == "UNAVAILABLE", index[model]
    for fragment in fragments:
        assert fragment in index[model]["reason"], index[model]
    ready = httpx.get(f"{triton_server.http_url}/v2/models/{model}/ready")
    assert ready.status_code == 503 and fragments[0] in ready.json()["reason"]
    failures = [line for line in triton_server.log().splitlines()
                if "event=model_load_failed" in line and f"model={model} " in line]
    assert len(failures) == 1 and fragments[0] in failures[0], triton_server.log()
    assert httpx.get(f"{triton_server.http_url}/v2/health/ready").status_code != 200

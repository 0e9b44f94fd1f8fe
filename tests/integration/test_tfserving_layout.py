"""A repository laid out as TF Serving lays out its model base paths, served as it is, called as
TF Serving's documentation calls it: the REST examples run as written (the port aside), TF Serving's
own gRPC client stubs, and the v2 API on the same models.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests import framework_models
from tests.helpers import run_client_script
from tests.server import ServerProcess

pytestmark = pytest.mark.slow
SCRIPT = Path(__file__).with_name("tfserving_grpc_checks.py")
#: What ``curl -d`` sends.
CURL_FORM = {"content-type": "application/x-www-form-urlencoded"}


@pytest.fixture(scope="module")
def tf_serving(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    repo = tmp_path_factory.mktemp("tf_serving") / "models"
    repo.mkdir()
    framework_models.tf_serving_models(repo)
    assert sorted(p.name for p in (repo / "half_plus_three" / "00000123").iterdir()) == [
        "assets", "fingerprint.pb", "saved_model.pb", "variables"]
    process = ServerProcess(repo)
    process.start(timeout=120)
    yield process
    assert process.stop() == 0
    assert "Traceback" not in process.log(), process.log()


@pytest.fixture(scope="module")
def client(tf_serving: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=tf_serving.http_url, timeout=60) as c:
        yield c


def test_the_documented_rest_examples(client: httpx.Client) -> None:
    # $ curl http://localhost:8501/v1/models/half_plus_three
    r = client.get("/v1/models/half_plus_three")
    assert r.status_code == 200 and r.json() == {"model_version_status": [
        {"version": "123", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}]}
    # $ curl -d '{"instances": [1.0,2.0,5.0]}' -X POST http://localhost:8501/v1/models/half_plus_three:predict
    r = client.post("/v1/models/half_plus_three:predict", content=b'{"instances": [1.0,2.0,5.0]}', headers=CURL_FORM)
    assert r.status_code == 200 and r.json() == {"predictions": [3.5, 4.0, 5.5]}
    # $ curl -i -d '{"instances": [1.0,5.0]}' -X POST http://localhost:8501/v1/models/half:predict
    r = client.post("/v1/models/half:predict", content=b'{"instances": [1.0,5.0]}', headers=CURL_FORM)
    assert r.status_code == 404 and r.headers["content-type"] == "application/json"
    assert list(r.json()) == ["error"] and "'half'" in r.json()["error"]
    # The regress example: tf.Example protos are not served (a clear 501 in TF Serving's error form).
    r = client.post("/v1/models/half_plus_three:regress", headers=CURL_FORM,
                    content=b'{"signature_name": "tensorflow/serving/regress", "examples": [{"x": 1.0}, {"x": 2.0}]}')
    assert r.status_code == 501 and ":regress is not supported" in r.json()["error"]


def test_metadata_and_columnar_predict(client: httpx.Client) -> None:
    document = client.get("/v1/models/half_plus_three/versions/123/metadata").json()
    assert document["model_spec"] == {"name": "half_plus_three", "signature_name": "", "version": "123"}
    signature = document["metadata"]["signature_def"]["signature_def"]["serving_default"]
    assert signature["inputs"]["x"]["dtype"] == "DT_FLOAT"
    assert signature["inputs"]["x"]["tensor_shape"]["dim"] == [{"size": "-1", "name": ""}]
    assert signature["outputs"]["y"]["dtype"] == "DT_FLOAT"
    r = client.post("/v1/models/half_plus_three/versions/123:predict", json={"inputs": {"x": [2.0, -6.0]}})
    assert r.json() == {"outputs": [4.0, 0.0]}


def test_strings_and_b64_in_a_savedmodel(client: httpx.Client) -> None:
    binary = base64.b64encode(b"\xff\xfe").decode()
    body = {"signature_name": "predict_strings", "instances": ["tensor", "gåte", {"b64": binary}]}
    predictions = client.post("/v1/models/string_lengths:predict", json=body).json()["predictions"]
    assert predictions == [
        {"echo_bytes": {"b64": base64.b64encode(b"tensor").decode()}, "length": 6},
        {"echo_bytes": {"b64": base64.b64encode("gåte".encode()).decode()}, "length": 5},
        {"echo_bytes": {"b64": binary}, "length": 2},
    ]
    r = client.post("/v1/models/string_lengths:predict", json={"instances": [{"b64": "@@@"}]})
    assert r.status_code == 400 and "'b64' value '@@@' is not valid base64" in r.json()["error"]
    r = client.post("/v1/models/string_lengths:predict", json={"signature_name": "classify", "instances": ["a"]})
    assert r.status_code == 400 and "has one signature, 'predict_strings'" in r.json()["error"]
    signatures = client.get("/v1/models/string_lengths/metadata").json()["metadata"]["signature_def"]
    assert list(signatures["signature_def"]) == ["predict_strings"]


def test_the_v2_api_serves_the_same_models(client: httpx.Client) -> None:
    metadata = client.get("/v2/models/half_plus_three").json()
    assert metadata["versions"] == ["123"] and metadata["platform"] == "tensorflow_savedmodel"
    assert metadata["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1]}]
    body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [3], "data": [1.0, 2.0, 5.0]}]}
    r = client.post("/v2/models/half_plus_three/versions/123/infer", json=body)
    assert r.status_code == 200 and r.json()["outputs"][0]["data"] == [3.5, 4.0, 5.5]


def test_a_config_beside_the_layout_turns_batching_on(client: httpx.Client) -> None:
    config = client.get("/v2/models/half_plus_three_batched/config").json()
    assert config["max_batch_size"] == 8
    r = client.post("/v1/models/half_plus_three_batched:predict", json={"instances": [1.0, 2.0]})
    assert r.json() == {"predictions": [3.5, 4.0]}
    r = client.post("/v1/models/half_plus_three_batched:predict", json={"instances": [1.0] * 9})
    assert r.status_code == 400 and "exceeds the model's max_batch_size 8" in r.json()["error"]


def test_tf_serving_client_stubs(tf_serving: ServerProcess) -> None:
    outcome = run_client_script(SCRIPT, tf_serving.grpc_address, "layout", timeout=180)
    assert outcome == {"half_plus_three": "ok", "strings_in_a_savedmodel": "ok"}, outcome

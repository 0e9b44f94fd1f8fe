"""TF Serving's REST API (``/v1/models/...``) against the shared server: every runtime, both formats.

The digits models hold the same weights in every framework, so ``:predict`` must give the logits
the v2 API gives. The identity model (five datatypes) checks the datatypes, b64, several
inputs and outputs, and the columnar format's per-input first dimension.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.server import ServerProcess

FRAMEWORKS = ["digits_onnx", "digits_torchscript", "digits_torch_export", "digits_torch_aoti", "digits_savedmodel",
              "digits_jax"]


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.http_url, timeout=60) as c:
        yield c


@pytest.fixture(scope="module")
def digits() -> np.ndarray:
    """Five seeded digit-like rows of 64 values in [0, 1]."""
    return np.random.default_rng(0).random((5, 64), dtype=np.float32)


def _v2_logits(client: httpx.Client, model: str, x: np.ndarray) -> np.ndarray:
    body = {"inputs": [{"name": "input", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}]}
    r = client.post(f"/v2/models/{model}/infer", json=body)
    assert r.status_code == 200, r.text
    return np.array(r.json()["outputs"][0]["data"], dtype=np.float32).reshape(len(x), 10)


def _predict(client: httpx.Client, path: str, body: Any, status: int = 200) -> Any:
    r = client.post(f"/v1/models/{path}:predict", json=body)
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/json"
    return r.json()


@pytest.mark.parametrize("model", FRAMEWORKS)
def test_predict_agrees_with_v2_in_every_runtime(client: httpx.Client, digits: np.ndarray, model: str) -> None:
    expected = _v2_logits(client, model, digits)
    rows = _predict(client, model, {"instances": digits.tolist()})["predictions"]
    named_rows = _predict(client, model, {"instances": [{"input": row} for row in digits.tolist()]})["predictions"]
    columns = _predict(client, f"{model}/versions/1", {"inputs": {"input": digits.tolist()}})["outputs"]
    unnamed = _predict(client, model, {"signature_name": "serving_default", "inputs": digits.tolist()})["outputs"]
    for answer in (rows, named_rows, columns, unnamed):
        np.testing.assert_allclose(np.array(answer, dtype=np.float32), expected, rtol=1e-6, atol=1e-6)


def test_model_status_as_tf_serving_writes_it(client: httpx.Client) -> None:
    ok = {"error_code": "OK", "error_message": ""}
    assert client.get("/v1/models/digits_onnx").json() == {
        "model_version_status": [{"version": "1", "state": "AVAILABLE", "status": ok}]}
    every = client.get("/v1/models/versioned").json()["model_version_status"]
    assert [(s["version"], s["state"]) for s in every] == [("1", "AVAILABLE"), ("2", "AVAILABLE")]
    one = client.get("/v1/models/versioned/versions/2").json()["model_version_status"]
    assert one == [{"version": "2", "state": "AVAILABLE", "status": ok}]


def test_metadata_as_tf_serving_writes_it(client: httpx.Client) -> None:
    document = client.get("/v1/models/digits_onnx/metadata").json()
    assert document["model_spec"] == {"name": "digits_onnx", "signature_name": "", "version": "1"}
    signature = document["metadata"]["signature_def"]["signature_def"]["serving_default"]
    assert signature["method_name"] == "tensorflow/serving/predict"
    assert signature["inputs"] == {"input": {
        "dtype": "DT_FLOAT", "name": "input",
        "tensor_shape": {"dim": [{"size": "-1", "name": ""}, {"size": "64", "name": ""}], "unknown_rank": False}}}
    assert signature["outputs"]["logits"]["tensor_shape"]["dim"][1] == {"size": "10", "name": ""}
    pinned = client.get("/v1/models/versioned/versions/1/metadata").json()
    assert pinned["model_spec"]["version"] == "1"
    # An unbatched model's shapes are its own: no batch dimension is added.
    flat = client.get("/v1/models/flat_identity/metadata").json()["metadata"]["signature_def"]["signature_def"]
    assert flat["serving_default"]["inputs"]["x"]["tensor_shape"]["dim"] == [{"size": "-1", "name": ""}]


def test_versions_pick_the_model_that_answers(client: httpx.Client) -> None:
    x = [[0.0, 0.0, 0.0, 0.0]]
    assert _predict(client, "versioned", {"instances": x})["predictions"] == [[2.0] * 4]  # the latest served
    assert _predict(client, "versioned/versions/1", {"instances": x})["predictions"] == [[1.0] * 4]


def _identity_row(i: int) -> dict[str, Any]:
    return {"in_fp32": [i + 0.5, -1.0], "in_int64": [2**40 + i, -i], "in_bool": [True, i % 2 == 1],
            "in_bytes": [f"text{i}", {"b64": base64.b64encode("é\n".encode()).decode()}], "in_fp16": [0.25, i]}


def test_several_inputs_and_outputs_in_the_row_format(client: httpx.Client) -> None:
    predictions = _predict(client, "identity", {"instances": [_identity_row(0), _identity_row(1)]})["predictions"]
    assert len(predictions) == 2
    for i, row in enumerate(predictions):
        assert row["out_fp32"] == [i + 0.5, -1.0]
        assert row["out_int64"] == [2**40 + i, -i]
        # An output whose name ends in _bytes is binary (TF Serving's rule): b64 out, whatever came in.
        assert [base64.b64decode(e["b64"]) for e in row["out_bytes"]] == [f"text{i}".encode(), "é\n".encode()]
        assert row["out_bool"] == [True, i % 2 == 1]
        assert row["out_fp16"] == [0.25, i]


def test_columnar_format_by_name(client: httpx.Client) -> None:
    rows = [_identity_row(0), _identity_row(1)]
    columns = {name: [row[name] for row in rows] for name in rows[0]}
    outputs = _predict(client, "identity", {"inputs": columns})["outputs"]
    assert set(outputs) == {"out_fp32", "out_int64", "out_bytes", "out_bool", "out_fp16"}
    assert outputs["out_int64"] == [[2**40, 0], [2**40 + 1, -1]]
    assert outputs["out_bytes"][1][0] == {"b64": base64.b64encode(b"text1").decode()}


def test_non_finite_floats_travel_as_tf_serving_writes_them(client: httpx.Client) -> None:
    r = client.post("/v1/models/flat_identity:predict", content=b'{"inputs": [1.5, NaN, Infinity, -Infinity]}')
    assert r.status_code == 200, r.text
    assert r.text.replace(" ", "") == '{"outputs":[1.5,NaN,Infinity,-Infinity]}'


def test_tf_serving_requests_count_in_the_model_metrics(server: ServerProcess, client: httpx.Client) -> None:
    def count() -> float:
        labels = {"model": "failing", "protocol": "rest", "outcome": "success"}
        return sum(sample.value for family in text_string_to_metric_families(httpx.get(server.metrics_url).text)
                   for sample in family.samples
                   if sample.name == "tensorgate_requests_total" and labels.items() <= sample.labels.items())

    before = count()
    for _ in range(3):
        _predict(client, "failing", {"inputs": [1.0, 2.0, 3.0]})
    assert count() == before + 3


# --- bad input -----------------------------------------------------------------------------------

BAD = [
    ("both formats", "digits_onnx", {"instances": [[0.0] * 64], "inputs": [[0.0] * 64]}, 400, "not both"),
    ("neither format", "digits_onnx", {"signature_name": ""}, 400, "either 'instances'"),
    ("ragged instances", "digits_onnx", {"instances": [[0.0] * 64, [0.0] * 63]}, 400,
     "instances: input 'input' is ragged"),
    ("ragged columns", "identity", {"inputs": {"in_fp32": [[1.0], [1.0, 2.0]]}}, 400, "'in_fp32' is ragged"),
    ("instances naming different inputs", "identity", {"instances": [{"in_fp32": [1.0]}, {"in_int64": [1]}]}, 400,
     "instances[1] has inputs"),
    ("not base64", "identity", {"inputs": {"in_bytes": [[{"b64": "not base64!"}]]}}, 400,
     "input 'in_bytes': the 'b64' value 'not base64!' is not valid base64"),
    ("unknown signature", "digits_onnx", {"signature_name": "classify", "instances": [[0.0] * 64]}, 400,
     "signature_name 'classify'"),
    ("unknown input", "digits_onnx", {"inputs": {"pixels": [[0.0] * 64]}}, 400, "has no input 'pixels'"),
    ("unnamed input of a model with five", "identity", {"instances": [[1.0]]}, 400, "has 5 inputs"),
    ("wrong shape", "digits_onnx", {"instances": [[0.0] * 63]}, 400, "input 'input': shape [1, 63]"),
    ("text for a number", "digits_onnx", {"instances": [["a"] * 64]}, 400, "not valid FP32 values"),
    ("missing input", "identity", {"inputs": {"in_fp32": [[1.0]]}}, 400, "needs input(s)"),
    ("unknown model", "half", {"instances": [1.0, 5.0]}, 404, "unknown model 'half'"),
    ("unknown version", "versioned/versions/7", {"instances": [[0.0] * 4]}, 404, "no version '7'"),
    ("a label", "versioned/labels/stable", {"instances": [[0.0] * 4]}, 400,
     "Unrecognized servable version label: stable"),
]


@pytest.mark.parametrize(("path", "body", "status", "message"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_predict_requests(client: httpx.Client, path: str, body: Any, status: int, message: str) -> None:
    error = _predict(client, path, body, status)
    assert set(error) == {"error"} and message in error["error"], error


def test_malformed_json_and_unsupported_verbs(client: httpx.Client) -> None:
    r = client.post("/v1/models/digits_onnx:predict", content=b"{not json")
    assert r.status_code == 400 and "malformed JSON" in r.json()["error"]
    for verb in ("classify", "regress"):
        r = client.post(f"/v1/models/digits_onnx:{verb}", json={"examples": [{"x": 1.0}]})
        assert r.status_code == 501 and f":{verb} is not supported" in r.json()["error"]
    r = client.post("/v1/models/digits_onnx:explain", json={})
    assert r.status_code == 400 and "unknown verb" in r.json()["error"]


def test_status_and_metadata_errors(client: httpx.Client) -> None:
    r = client.get("/v1/models/half")
    assert r.status_code == 404 and "unknown model 'half'" in r.json()["error"]
    r = client.get("/v1/models/versioned/versions/3")
    assert r.status_code == 404 and "no version '3'" in r.json()["error"]
    for path in ("/v1/models/versioned/labels/stable", "/v1/models/versioned/labels/canary/metadata"):
        r = client.get(path)
        assert r.status_code == 400 and "Unrecognized servable version label" in r.json()["error"]

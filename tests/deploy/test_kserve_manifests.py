"""deploy/kserve and the chart's KServe option, checked offline against KServe's resource schemas
(third_party/kserve: KServe's and Kubernetes' SDK types; what that covers is in its README)."""

from __future__ import annotations

import copy
import json
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import helm_python as helm
import jsonschema
import pytest
import yaml

from tests import kserve_manifests as km
from tests.deploy.chart_helpers import CHART, EXAMPLES, KUBE_VERSIONS, NAMESPACE, manifests, render
from tests.helpers import ROOT

SCHEMAS = ROOT / "third_party" / "kserve"
KSERVE_PYTHON = ROOT / ".venv-kserve" / "bin" / "python"
KSERVE_VALUES = EXAMPLES / "kserve.yaml"
KSERVE_KINDS = ("ClusterServingRuntime", "ServingRuntime", "InferenceService")


@cache
def _validator(kind: str) -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(json.loads((SCHEMAS / f"{kind.lower()}.json").read_text()))


def _problems(obj: dict[str, Any]) -> list[str]:
    return [f"{list(e.absolute_path)}: {e.message}" for e in _validator(obj["kind"]).iter_errors(obj)]


def _kserve_values() -> dict[str, Any]:
    values: dict[str, Any] = yaml.safe_load(KSERVE_VALUES.read_text())
    return values


@pytest.fixture(scope="module", autouse=True)
def _quiet_helm() -> None:
    helm.disable_logging()


def test_the_schemas_are_the_kserve_sdks_types(tmp_path: Path) -> None:
    if not KSERVE_PYTHON.exists():
        pytest.fail(f"{KSERVE_PYTHON} is missing: run `make kserve-sdk` (the KServe SDK's own venv)")
    subprocess.run([str(KSERVE_PYTHON), str(Path(__file__).with_name("kserve_schema.py")), str(tmp_path)],
                   check=True, timeout=120)
    for generated in sorted(tmp_path.glob("*.json")):
        assert generated.read_text() == (SCHEMAS / generated.name).read_text(), \
            f"third_party/kserve/{generated.name} is stale: regenerate it (third_party/kserve/README.md)"


@pytest.mark.parametrize("path", [km.RUNTIME, *km.INFERENCE_SERVICES.values()], ids=lambda p: p.name)
def test_every_deploy_manifest_is_valid_for_kserve(path: Path) -> None:
    obj = km.load(path)
    assert obj["kind"] in KSERVE_KINDS
    assert _problems(obj) == []


def test_the_schemas_refuse_a_misspelt_field_a_wrong_type_and_a_missing_name() -> None:
    runtime = km.load(km.RUNTIME)
    runtime["spec"]["supportedModelFormats"][0]["autoselect"] = True
    container = runtime["spec"]["containers"][0]
    container["ports"][0]["containerPort"] = "8080"
    del container["name"]
    problems = _problems(runtime)
    assert any("'autoselect' was unexpected" in p for p in problems), problems
    assert any("'8080' is not of type 'integer'" in p for p in problems), problems
    assert any("'name' is a required property" in p for p in problems), problems
    isvc = km.load(km.INFERENCE_SERVICES["onnx"])
    isvc["spec"]["predictor"]["model"]["storageURI"] = "s3://x"
    assert any("'storageURI' was unexpected" in p for p in _problems(isvc))


def test_the_runtime_serves_kserves_formats_and_protocols_from_mnt_models() -> None:
    spec = km.load(km.RUNTIME)["spec"]
    formats = {f["name"]: f for f in spec["supportedModelFormats"]}
    assert set(formats) == {"onnx", "pytorch", "tensorflow", "jax"}
    assert spec["protocolVersions"] == ["v2", "grpc-v2"]
    # Formats that KServe's own runtimes serve carry no priority, so Triton (1) and TorchServe (2) stay the
    # ones KServe picks where installed; jax has no other runtime.
    assert all(f["autoSelect"] for f in formats.values())
    assert [name for name, f in formats.items() if "priority" in f] == ["jax"]
    container = km.runtime_container({"spec": spec})
    assert "--model-repo=/mnt/models" in container["args"] and "--model-name={{.Name}}" in container["args"]
    assert container["ports"] == [{"name": "http1", "containerPort": km.HTTP_PORT, "protocol": "TCP"}]
    for path in km.INFERENCE_SERVICES.values():
        model = km.load(path)["spec"]["predictor"]["model"]
        assert model["runtime"] == "tensorgate" and model["modelFormat"]["name"] in formats
        assert model["protocolVersion"] in spec["protocolVersions"]  # KServe's default, v1, would not match


def test_placeholders_are_rendered_as_kserve_renders_them() -> None:
    metadata = {"name": "digits", "namespace": "ml", "labels": {"team": "a"}}
    assert km.render("--model-name={{.Name}} {{.Namespace}} {{ .Labels.team }}", metadata) == "--model-name=digits ml a"
    with pytest.raises(AssertionError, match="template text"):
        km.render("{{.Spec.Name}}", metadata)


# --- the chart's KServe option ---------------------------------------------------------------------------------


def _kserve_objects(values: dict[str, Any]) -> list[dict[str, Any]]:
    return [o for o in manifests(render(values)) if o["kind"] in KSERVE_KINDS]


def test_kserve_is_off_by_default() -> None:
    assert _kserve_objects({}) == []


@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
def test_the_kserve_example_values_lint_strictly(kube_version: str) -> None:
    report = helm.lint(CHART, _kserve_values(), strict=True, kube_version=f"v{kube_version}")
    assert report["messages"] == [] and report["errors"] == [], report


def test_the_chart_renders_deploy_kserves_runtime_and_valid_inference_services() -> None:
    objects = _kserve_objects(_kserve_values())
    for obj in objects:
        assert _problems(obj) == [], obj["metadata"]["name"]
        assert obj["metadata"]["labels"]["app.kubernetes.io/instance"] == "tg"
    [runtime] = [o for o in objects if o["kind"] == "ClusterServingRuntime"]
    assert "namespace" not in runtime["metadata"]  # cluster-scoped
    expected = copy.deepcopy(km.load(km.RUNTIME)["spec"])
    expected["containers"][0]["image"] = runtime["spec"]["containers"][0]["image"]
    assert runtime["spec"] == expected
    services = {o["metadata"]["name"]: o for o in objects if o["kind"] == "InferenceService"}
    for fmt in ("onnx", "pytorch", "tensorflow", "jax"):
        example = km.load(km.INFERENCE_SERVICES[fmt])
        assert services[example["metadata"]["name"]]["spec"] == example["spec"]
        assert services[example["metadata"]["name"]]["metadata"]["namespace"] == NAMESPACE


def test_a_namespaced_runtime_with_a_priority() -> None:
    values = {"kserve": {"servingRuntime": {"enabled": True, "kind": "ServingRuntime",
                                            "formats": {"onnx": {"version": "1", "autoSelect": True,
                                                                 "priority": 10}}}}}
    [runtime] = _kserve_objects(values)
    assert runtime["kind"] == "ServingRuntime" and runtime["metadata"]["namespace"] == NAMESPACE
    assert _problems(runtime) == []
    assert runtime["spec"]["supportedModelFormats"][0] == {"name": "onnx", "version": "1", "autoSelect": True,
                                                           "priority": 10}


@pytest.mark.parametrize(("values", "message"), [
    ({"kserve": {"servingRuntime": {"kind": "Runtime"}}}, "at '/kserve/servingRuntime/kind'"),
    ({"kserve": {"servingRuntime": {"formats": {"sklearn": {}}}}}, "additional properties 'sklearn' not allowed"),
    ({"kserve": {"inferenceServices": [{"name": "m", "format": "sklearn", "storageUri": "s3://m"}]}},
     "at '/kserve/inferenceServices/0/format'"),
    ({"kserve": {"inferenceServices": [{"name": "m", "format": "onnx"}]}}, "missing property 'storageUri'"),
])
def test_bad_kserve_values_are_refused_naming_the_key(values: dict[str, Any], message: str) -> None:
    with pytest.raises(helm.HelmValuesError) as error:
        render(values)
    assert message in str(error.value)

"""Endpoint groups (every route and method in one), the --protect rules, key files and the key check."""

from __future__ import annotations

import argparse
import importlib
import logging
import pkgutil
from pathlib import Path
from typing import Any

import pytest
from fastapi.routing import APIRoute
from grpc_health.v1 import health_pb2
from starlette.routing import Route

import gateway
from gateway.access import (
    GROUPS,
    AccessError,
    Gate,
    grpc_group,
    load_policy,
    read_keys_file,
    rest_group,
)
from gateway.dataplane import DataPlane, WorkerLinks
from gateway.grpc.generated import grpc_service_pb2
from gateway.metrics import RequestMetrics
from gateway.protocol.system_shm import SystemSharedMemory
from gateway.rest.app import create_app
from gateway.rest.http_server import _infer_route
from gateway.settings import Settings, SettingsError, add_serve_arguments, settings_from

KEY = "k" * 16
OTHER = "o" * 32


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("PROTECT", "API_KEYS_FILE", "API_KEYS", "OPEN_GROUPS", "CORS_ORIGINS"):
        monkeypatch.delenv(f"TENSORGATE_{name}", raising=False)


def _settings(*argv: str) -> Settings:
    parser = argparse.ArgumentParser()
    add_serve_arguments(parser)
    return settings_from(parser.parse_args(list(argv)))


# --- every endpoint in exactly one group ----------------------------------------------------------


def test_every_route_of_the_rest_app_is_in_a_group() -> None:
    app = create_app(DataPlane(RequestMetrics(enabled=False), WorkerLinks(1 << 20)), 1 << 20, SystemSharedMemory())
    routes = [r for r in app.routes if isinstance(r, (APIRoute, Route))]
    assert len(routes) > 20
    unmapped = [r.path for r in routes if rest_group(r.path) not in GROUPS]
    assert not unmapped, f"routes without an endpoint group (add them to gateway/access.py): {unmapped}"
    named = {r.name: rest_group(r.path) for r in routes}
    assert named["infer"] == named["infer_version"] == "inference"
    assert named["model_ready"] == named["live"] == "health"
    assert named["all_statistics"] == named["model_statistics_version"] == "statistics"
    assert named["model_config"] == named["server_metadata"] == "metadata"


@pytest.mark.parametrize("path", ["/v2/models/m/infer", "/v2/models/m/versions/3/infer", "/v2/models/a%2Fb/infer"])
def test_every_fast_path_route_is_inference(path: str) -> None:
    assert _infer_route(path.encode()) is not None
    assert rest_group(path) == "inference"


def _grpc_services() -> list[Any]:
    """Every service of every generated module in the gateway package, and grpc.health.v1."""
    modules = [health_pb2, grpc_service_pb2]
    for info in pkgutil.walk_packages(gateway.__path__, "gateway."):
        if info.name.endswith("_pb2"):
            modules.append(importlib.import_module(info.name))
    return [service for module in modules for service in module.DESCRIPTOR.services_by_name.values()]


def test_every_method_of_the_served_grpc_services_is_in_a_group() -> None:
    services = _grpc_services()
    assert {"inference.GRPCInferenceService", "grpc.health.v1.Health"} <= {s.full_name for s in services}
    unmapped = [f"/{s.full_name}/{m.name}" for s in services for m in s.methods
                if grpc_group(f"/{s.full_name}/{m.name}") not in GROUPS]
    assert not unmapped, f"gRPC methods without an endpoint group (add them to gateway/access.py): {unmapped}"
    assert grpc_group("/inference.GRPCInferenceService/RepositoryModelLoad") == "model-repository"
    assert grpc_group("/grpc.health.v1.Health/Watch") == "health"


@pytest.mark.parametrize(("path", "group"), [
    ("/v1/models/m", "health"), ("/v1/models/m/versions/2", "health"), ("/v1/models/m/labels/stable", "health"),
    ("/v1/models/m/metadata", "metadata"), ("/v1/models/m/labels/stable/metadata", "metadata"),
    ("/v1/models/m:predict", "inference"), ("/v1/models/m/versions/2:regress", "inference"),
    ("/v1/models/{model_name}/labels/{label}:{verb}", "inference"), ("/v1/models/m:anything", "inference"),
])
def test_tf_serving_paths(path: str, group: str) -> None:
    """TF Serving's REST API (gateway/tfserving): status is health, as TF Serving users probe it."""
    assert rest_group(path) == group
    assert grpc_group("/tensorflow.serving.PredictionService/Predict") == "inference"
    assert grpc_group("/tensorflow.serving.ModelService/GetModelStatus") == "health"


@pytest.mark.parametrize("path", ["/", "/v1/models", "/v1/models/m/x", "/v1/models/:predict", "/v2/models/a/b/infer",
                                  "/v2/models/m/versions", "/v2/models//infer", "/v2/models/m/versions/1/x/y",
                                  "/v2/unknown"])
def test_a_path_no_route_serves_has_no_group(path: str) -> None:
    assert rest_group(path) is None
    assert grpc_group("/inference.GRPCInferenceService/NoSuchMethod") is None
    assert grpc_group("/no.Such/Method") is None


# --- rules and keys -------------------------------------------------------------------------------


def test_rules_from_flags_and_from_the_variable(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert _settings().protect == ()
    rules = _settings("--protect", "inference:X-Api-Key", "--protect", "model-repository,shared-memory:x-admin").protect
    assert rules == ("inference:X-Api-Key", "model-repository,shared-memory:x-admin")
    monkeypatch.setenv("TENSORGATE_PROTECT", f"inference,metrics:x-api-key; model-repository:x-admin:{tmp_path}/k")
    assert _settings().protect == ("inference,metrics:x-api-key", f"model-repository:x-admin:{tmp_path}/k")


@pytest.mark.parametrize(("argv", "message"), [
    (["--protect", "inference"], "is not GROUP[,GROUP]:HEADER[:KEYS_FILE]"),
    (["--protect", "inferense:x-api-key"], "unknown group inferense"),
    (["--protect", ":x-api-key"], "unknown group (none given)"),
    (["--protect", "inference:content-type"], "'content-type' cannot carry a key"),
    (["--protect", "inference:grpc-timeout"], "cannot carry a key"),
    (["--protect", "inference:x api"], "cannot carry a key"),
    (["--protect", "inference:a", "--protect", "metrics,inference:b"], "group inference is in two rules"),
    (["--open-groups", "inference"], "'inference' cannot be opened"),
    (["--open-groups", "shared-memory", "--protect", "shared-memory:x-admin"], "shared-memory is also protected"),
    (["--cors-origins", "https://app.example.com/"], "is not an origin"),
    (["--cors-origins", "app.example.com"], "is not an origin"),
])
def test_bad_rules_are_refused_naming_the_flag(argv: list[str], message: str) -> None:
    with pytest.raises(SettingsError) as info:
        _settings(*argv)
    assert message in str(info.value)


def test_a_keys_file_ignores_blank_lines_and_whitespace(tmp_path: Path) -> None:
    path = tmp_path / "keys"
    path.write_bytes(f"\r\n  {KEY}\t\r\n\n{OTHER}".encode())
    assert read_keys_file(path) == (KEY, OTHER)


@pytest.mark.parametrize(("content", "message"), [
    (b"", "no keys in it"), (b" \n\r\n\t\n", "no keys in it"),
    (f"{KEY}\n{KEY} {KEY}\n".encode(), "line 2: not a valid key"),
    (f"{KEY},{OTHER}\n".encode(), "line 1: not a valid key"), (b"short\n", "line 1: not a valid key"),
    ("\u00e9".encode() * 20, "not ASCII text"),
])
def test_a_bad_keys_file_is_refused_without_showing_a_key(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "keys"
    path.write_bytes(content)
    with pytest.raises(AccessError) as info:
        read_keys_file(path)
    assert str(path) in str(info.value) and message in str(info.value)
    assert KEY not in str(info.value)


def test_keys_come_from_one_place(tmp_path: Path) -> None:
    (tmp_path / "keys").write_text(KEY)
    both = _settings("--protect", "inference:x-api-key", "--api-keys-file", str(tmp_path / "keys"))
    with pytest.raises(AccessError, match="--api-keys-file and TENSORGATE_API_KEYS are both set"):
        load_policy(both, {"TENSORGATE_API_KEYS": OTHER})
    policy = load_policy(_settings("--protect", "inference:x-api-key",
                                   "--protect", f"model-repository:x-admin:{tmp_path / 'keys'}"),
                         {"TENSORGATE_API_KEYS": f" {OTHER} ,"})
    assert policy.gates["inference"].check([OTHER.encode()]) is None
    assert policy.gates["inference"].check([KEY.encode()]) is not None
    assert policy.gates["model-repository"].check([KEY.encode()]) is None
    assert policy.gates["shared-memory"].check([KEY.encode()]).reason == "refused"  # type: ignore[union-attr]
    assert policy.headers == ("x-admin", "x-api-key")


def test_the_default_policy() -> None:
    policy = load_policy(_settings(), {})
    assert [g for g in GROUPS if not policy.gates[g].open] == ["model-repository", "shared-memory"]
    opened = load_policy(_settings("--open-groups", "model-repository,Shared-Memory"), {})
    assert all(gate.open for gate in opened.gates.values())


def test_the_key_check() -> None:
    gate = Gate("inference", "x-api-key", (KEY, OTHER))
    assert gate.check([KEY.encode()]) is None and gate.check([OTHER.encode()]) is None
    assert gate.check([b" " + KEY.encode() + b"\t"]) is None  # optional whitespace around a header value
    reasons = {name: gate.check(values) for name, values in {
        "missing": [], "wrong": [KEY.encode()[:-1]], "longer": [KEY.encode() + b"k"],
        "repeated": [KEY.encode(), KEY.encode()], "list": [KEY.encode() + b"," + OTHER.encode()]}.items()}
    assert {name: r.reason if r else None for name, r in reasons.items()} == {
        "missing": "missing", "wrong": "wrong", "longer": "wrong", "repeated": "repeated", "list": "repeated"}
    assert all(r is not None and r.status == 401 and r.grpc_code == "UNAUTHENTICATED" for r in reasons.values())
    refused = Gate("shared-memory").check([KEY.encode()])
    assert refused is not None and refused.status == 403 and refused.grpc_code == "PERMISSION_DENIED"


def test_refusals_are_logged_rate_limited_and_without_the_key(caplog: pytest.LogCaptureFixture) -> None:
    policy = load_policy(_settings("--protect", "inference:x-api-key"), {"TENSORGATE_API_KEYS": KEY})
    caplog.set_level(logging.WARNING, "tensorgate.access")
    for _ in range(5):
        refusal = policy.gates["inference"].check([OTHER.encode()])
        assert refusal is not None
        policy.refused(refusal, "rest", "/v2/models/m/infer", "10.0.0.1")
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and "event=access_refused group=inference reason=wrong" in lines[0]
    assert "client=10.0.0.1" in lines[0] and KEY not in lines[0] and OTHER not in lines[0]


def test_cors_settings() -> None:
    assert _settings().cors_origins == ()
    cors = _settings("--cors-origins", "https://App.example.com, http://localhost:3000", "--cors-methods", "get,PUT")
    assert cors.cors_origins == ("https://app.example.com", "http://localhost:3000")
    assert cors.cors_methods == ("get", "put") and _settings("--cors-origins", "*").cors_origins == ("*",)

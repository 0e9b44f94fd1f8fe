"""The Helm chart, checked offline with real tools: Helm's engine lints and renders it, every
manifest validates strictly against the Kubernetes schemas of two versions, and the Prometheus
Operator objects against typed models of their CRDs.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path
from typing import Any

import helm_python as helm
import kubernetes_validate
import pytest
import yaml
from cloudcoil.models.prometheus_operator import v1 as monitoring_v1
from dockerfile_parse import DockerfileParser

from gateway.settings import Settings, add_serve_arguments, settings_from
from tests.deploy.chart_helpers import (
    CHART,
    DASHBOARD,
    FULLNAME,
    KUBE_VERSIONS,
    NAMESPACE,
    ROOT,
    RULES,
    VALUE_SETS,
    by_kind,
    load_values,
    manifests,
    one,
    render,
    render_set,
    server_container,
)

#: Kinds of the Prometheus Operator, checked with its typed models instead of Kubernetes' schemas.
OPERATOR_MODELS: dict[str, Any] = {"ServiceMonitor": monitoring_v1.ServiceMonitor,
                                   "PrometheusRule": monitoring_v1.PrometheusRule}


@pytest.fixture(scope="module", autouse=True)
def _quiet_helm() -> None:
    helm.disable_logging()


def test_the_chart_offers_the_value_sets_the_issue_asks_for() -> None:
    assert {"defaults", "gpu", "pvc", "autoscaling-custom-metric", "monitoring"} <= set(VALUE_SETS)


# --- lint and render ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
@pytest.mark.parametrize("name", VALUE_SETS)
def test_helm_lints_strictly_without_findings(name: str, kube_version: str) -> None:
    report = helm.lint(CHART, load_values(name), strict=True, kube_version=f"v{kube_version}")
    assert report["total_charts_linted"] == 1
    assert report["messages"] == [] and report["errors"] == [], report


@pytest.mark.parametrize("name", VALUE_SETS)
def test_every_manifest_validates_strictly_for_both_kubernetes_versions(name: str) -> None:
    objects = render_set(name)
    assert objects
    for obj in objects:
        if obj["kind"] in OPERATOR_MODELS:
            continue
        for version in KUBE_VERSIONS:
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                pytest.fail(f"{name}: {obj['kind']} {obj['metadata']['name']} is invalid for Kubernetes "
                            f"{version} at {list(exc.path)}: {exc.message}")


@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
def test_the_strict_schemas_catch_a_misspelt_field(kube_version: str) -> None:
    deployment = one(manifests(render(None)), "Deployment")
    deployment["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {"periodSeconds": 5}
    with pytest.raises(kubernetes_validate.ValidationError, match="readinesProbe"):
        kubernetes_validate.validate(deployment, kube_version, strict=True)


@pytest.mark.parametrize("name", VALUE_SETS)
def test_every_object_has_the_release_labels_and_namespace(name: str) -> None:
    for obj in render_set(name):
        metadata = obj["metadata"]
        assert metadata["labels"]["app.kubernetes.io/instance"] == "tg", obj["kind"]
        assert metadata["namespace"] == NAMESPACE, obj["kind"]


def _check_operator_object(obj: dict[str, Any]) -> None:
    """Validate with the typed CRD model, and fail on any field the model does not know (typos)."""
    model = OPERATOR_MODELS[obj["kind"]].model_validate(obj)
    assert model.model_dump(by_alias=True, exclude_unset=True, mode="json") == obj, \
        f"{obj['kind']} has fields its CRD does not define"


def test_service_monitor_validates_against_the_operator_crd_model() -> None:
    objects = manifests(render({"monitoring": {"serviceMonitor": {"enabled": True, "interval": "15s",
                                                                  "labels": {"release": "prom"}}}}))
    monitor = one(objects, "ServiceMonitor")
    _check_operator_object(monitor)
    endpoint = monitor["spec"]["endpoints"][0]
    assert (endpoint["port"], endpoint["path"], endpoint["interval"]) == ("metrics", "/metrics", "15s")
    assert monitor["metadata"]["labels"]["release"] == "prom"
    # It selects the main Service (which names the metrics port), not the headless one.
    service = next(s for s in by_kind(objects, "Service") if s["metadata"]["name"] == FULLNAME)
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert "metrics" in {p["name"] for p in service["spec"]["ports"]}


def test_the_typed_check_catches_a_misspelt_field() -> None:
    objects = manifests(render({"monitoring": {"serviceMonitor": {"enabled": True}}}))
    monitor = one(objects, "ServiceMonitor")
    monitor["spec"]["endpoints"][0]["scrapeIntervall"] = "5s"
    with pytest.raises(AssertionError, match="fields its CRD does not define"):
        _check_operator_object(monitor)


FIXTURE_RULES = """\
groups:
  - name: tensorgate.test
    rules:
      - record: tensorgate:requests:rate5m
        expr: sum by (model) (rate(tensorgate_requests_total[5m]))
      - alert: TensorGateModelNotReady
        expr: tensorgate_model_ready == 0
        for: 5m
        labels: {severity: warning}
        annotations:
          summary: "Model {{ $labels.model }} is not ready"
"""
FIXTURE_DASHBOARD = {"title": "TensorGate", "uid": "tensorgate", "panels": [], "schemaVersion": 39,
                     "templating": {"list": [{"name": "datasource", "type": "datasource", "query": "prometheus"}]}}


def test_rules_and_dashboard_are_read_from_the_chart_files(tmp_path: Path) -> None:
    """The templates' machinery, on a copy of the chart with stand-in files (the real ones: below)."""
    chart = tmp_path / "tensorgate"
    shutil.copytree(CHART, chart)
    (chart / "files").mkdir(exist_ok=True)
    (chart / "files" / "prometheus-rules.yaml").write_text(FIXTURE_RULES)
    (chart / "files" / "grafana-dashboard.json").write_text(json.dumps(FIXTURE_DASHBOARD, indent=2))
    values = {"monitoring": {"prometheusRule": {"enabled": True}, "dashboard": {"enabled": True}}}
    objects = manifests(render(values, chart=chart))
    rule = one(objects, "PrometheusRule")
    _check_operator_object(rule)
    assert rule["spec"] == yaml.safe_load(FIXTURE_RULES)  # {{ $labels.model }} passes through untouched
    dashboard = one(objects, "ConfigMap")
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(dashboard["data"]["tensorgate.json"]) == FIXTURE_DASHBOARD
    for version in KUBE_VERSIONS:
        kubernetes_validate.validate(dashboard, version, strict=True)


def test_monitoring_renders_the_one_copy_of_the_dashboard_and_rules() -> None:
    objects = render_set("monitoring")
    for kind in ("ServiceMonitor", "PrometheusRule"):
        _check_operator_object(one(objects, kind))
    rules = yaml.safe_load(RULES.read_text())
    assert one(objects, "PrometheusRule")["spec"]["groups"] == rules.get("spec", rules)["groups"]
    dashboard = one(objects, "ConfigMap")
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(dashboard["data"]["tensorgate.json"]) == json.loads(DASHBOARD.read_text())


def test_the_repository_keeps_one_copy_of_the_dashboard_and_rules() -> None:
    """No second dashboard or rule file anywhere in the repository: the chart reads files/."""
    skip = {".git", ".venv", "node_modules", ".mypy_cache", ".pytest_cache", ".ruff_cache", ".hypothesis"}
    copies: dict[str, list[Path]] = {"dashboard": [], "rules": []}
    for path in ROOT.rglob("*"):
        if skip & set(path.relative_to(ROOT).parts) or not path.is_file():
            continue
        if path.suffix == ".json" and '"panels"' in path.read_text(errors="replace"):
            copies["dashboard"].append(path)
        if path.suffix in (".yaml", ".yml") and path.parent.name != "examples" and "tests" not in path.parts:
            text = path.read_text(errors="replace")
            if "groups:" in text and ("alert:" in text or "record:" in text):
                copies["rules"].append(path)
    assert copies["dashboard"] in ([], [DASHBOARD]), copies["dashboard"]
    assert copies["rules"] in ([], [RULES]), copies["rules"]
    templates = "".join(p.read_text() for p in (CHART / "templates").rglob("*") if p.is_file())
    assert 'Files.Get "files/grafana-dashboard.json"' in templates
    assert 'Files.Get "files/prometheus-rules.yaml"' in templates


# --- what the rendered objects say -------------------------------------------------------------------------


def test_defaults_deployment_probes_ports_and_shutdown() -> None:
    objects = render_set("defaults")
    container = server_container(objects)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": 8000, "grpc": 8001, "metrics": 8002}
    assert container["livenessProbe"]["httpGet"] == {"path": "/v2/health/live", "port": "http"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": "http"}
    startup = container["startupProbe"]
    assert startup["httpGet"] == {"path": "/v2/health/ready", "port": "http"}
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 600  # ten minutes to load models

    pod = one(objects, "Deployment")["spec"]["template"]["spec"]
    assert "--drain-timeout=30" in container["args"]
    pre_stop = int(container["lifecycle"]["preStop"]["exec"]["command"][1])
    assert pod["terminationGracePeriodSeconds"] > pre_stop + 30
    assert "--model-repo=/models" in container["args"]
    mount = next(m for m in container["volumeMounts"] if m["name"] == "models")
    assert (mount["mountPath"], mount["readOnly"]) == ("/models", True)


def test_drain_timeout_flows_to_the_server_and_the_grace_period() -> None:
    objects = manifests(render({"server": {"drainTimeoutSeconds": 120}, "preStopSleepSeconds": 10}))
    assert "--drain-timeout=120" in server_container(objects)["args"]
    assert one(objects, "Deployment")["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == 145
    explicit = manifests(render({"terminationGracePeriodSeconds": 90}))
    assert one(explicit, "Deployment")["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == 90


def test_log_format_and_access_log_flow_to_the_server() -> None:
    args = server_container(manifests(render({})))["args"]
    assert "--log-format=text" in args and "--access-log" not in args
    args = server_container(manifests(render({"server": {"logFormat": "json", "accessLog": True}})))["args"]
    assert "--log-format=json" in args and "--access-log" in args


def test_frontends_flow_to_the_server() -> None:
    """One by default (the pod requests one CPU, and without a CPU limit it would see the whole node)."""
    assert "--frontends=1" in server_container(manifests(render({})))["args"]
    assert "--frontends=4" in server_container(manifests(render({"server": {"frontends": 4}})))["args"]


def test_the_grpc_server_kind_flows_to_the_server() -> None:
    """The native server by default, as `tensorgate serve`'s own default; aio when asked: flags the server takes."""
    default = server_container(manifests(render({})))["args"]
    assert "--grpc-server=native" in default and _serve_settings(default).grpc_server == "native"
    aio = server_container(manifests(render({"server": {"grpcServer": "aio"}})))["args"]
    assert "--grpc-server=aio" in aio and "--grpc-server=native" not in aio
    assert _serve_settings(aio).grpc_server == "aio"


def test_the_grpc_keepalive_flows_to_the_server() -> None:
    """grpc's two hours by default, as `tensorgate serve`'s own; 0 turns it off."""
    default = server_container(manifests(render({})))["args"]
    assert "--grpc-keepalive=7200" in default and _serve_settings(default).grpc_keepalive == 7200
    off = server_container(manifests(render({"server": {"grpcKeepaliveSeconds": 0}})))["args"]
    assert "--grpc-keepalive=0" in off and _serve_settings(off).grpc_keepalive == 0


def test_the_grpc_ping_policy_flows_to_the_server() -> None:
    """grpc's 300 s by default, as `tensorgate serve`'s own; 0 turns the policy off."""
    default = server_container(manifests(render({})))["args"]
    assert "--grpc-min-ping-interval=300" in default and _serve_settings(default).grpc_min_ping_interval == 300
    off = server_container(manifests(render({"server": {"grpcMinPingIntervalSeconds": 0}})))["args"]
    assert "--grpc-min-ping-interval=0" in off and _serve_settings(off).grpc_min_ping_interval == 0


def test_defaults_are_locked_down() -> None:
    objects = render_set("defaults")
    pod = one(objects, "Deployment")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
    assert pod["automountServiceAccountToken"] is False
    assert pod["serviceAccountName"] == one(objects, "ServiceAccount")["metadata"]["name"]
    for container in pod["containers"] + pod.get("initContainers", []):
        security = container["securityContext"]
        assert security["allowPrivilegeEscalation"] is False
        assert security["readOnlyRootFilesystem"] is True
        assert security["capabilities"]["drop"] == ["ALL"]
    tmp = next(m for m in server_container(objects)["volumeMounts"] if m["name"] == "tmp")
    assert tmp["mountPath"] == "/tmp"


def test_defaults_scale_on_cpu_and_keep_one_pod_available() -> None:
    objects = render_set("defaults")
    hpa = one(objects, "HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert [m["type"] for m in hpa["spec"]["metrics"]] == ["Resource"]
    assert hpa["spec"]["metrics"][0]["resource"]["name"] == "cpu"
    assert "replicas" not in one(objects, "Deployment")["spec"]  # the HPA owns the count
    assert "cpu" in server_container(objects)["resources"]["requests"]  # utilisation needs a request
    assert one(objects, "PodDisruptionBudget")["spec"]["maxUnavailable"] == 1
    service = one(objects, "Service")
    assert service["spec"]["type"] == "ClusterIP"
    assert {p["name"]: p["targetPort"] for p in service["spec"]["ports"]} == {
        "http": "http", "grpc": "grpc", "metrics": "metrics"}
    assert not by_kind(objects, "Ingress")


def test_gpu_requests_nvidia_gpus_and_tolerates_gpu_nodes() -> None:
    objects = render_set("gpu")
    container = server_container(objects)
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    pod = one(objects, "Deployment")["spec"]["template"]["spec"]
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert "nvidia.com/gpu" not in server_container(render_set("defaults"))["resources"].get("limits", {})


def test_pvc_repository_mounts_the_existing_claim_read_only() -> None:
    objects = render_set("pvc")
    assert not by_kind(objects, "PersistentVolumeClaim")  # existing claim: nothing created
    pod = one(objects, "Deployment")["spec"]["template"]["spec"]
    volume = next(v for v in pod["volumes"] if v["name"] == "models")
    assert volume["persistentVolumeClaim"] == {"claimName": "model-store", "readOnly": True}
    mount = next(m for m in server_container(objects)["volumeMounts"] if m["name"] == "models")
    assert (mount["readOnly"], mount["subPath"]) == (True, "models")


def test_default_repository_is_a_created_claim_kept_on_uninstall() -> None:
    claim = one(render_set("defaults"), "PersistentVolumeClaim")
    assert claim["metadata"]["name"] == f"{FULLNAME}-models"
    assert claim["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    assert "storageClassName" not in claim["spec"]


def test_image_repository_is_copied_by_an_init_container() -> None:
    objects = render_set("image")
    pod = one(objects, "Deployment")["spec"]["template"]["spec"]
    (init,) = pod["initContainers"]
    assert init["image"] == "registry.example.com/my-models:2026-11-29"
    assert init["command"] == ["cp", "-R", "/models/.", "/models/"]
    assert {"name": "models", "mountPath": "/models"} in init["volumeMounts"]
    volume = next(v for v in pod["volumes"] if v["name"] == "models")
    assert volume["emptyDir"] == {"sizeLimit": "20Gi"}
    assert next(m for m in server_container(objects)["volumeMounts"] if m["name"] == "models")["readOnly"] is True


def test_volume_repository_uses_the_given_volume_source() -> None:
    pod = one(render_set("volume"), "Deployment")["spec"]["template"]["spec"]
    volume = next(v for v in pod["volumes"] if v["name"] == "models")
    assert volume == {"name": "models", "nfs": {"server": "nfs.example.com", "path": "/exports/model_repo",
                                                "readOnly": True}}


def test_custom_metric_autoscaling() -> None:
    objects = render_set("autoscaling-custom-metric")
    hpa = one(objects, "HorizontalPodAutoscaler")["spec"]
    assert (hpa["minReplicas"], hpa["maxReplicas"]) == (2, 20)
    pods = next(m for m in hpa["metrics"] if m["type"] == "Pods")["pods"]
    assert pods["metric"]["name"] == "tensorgate_queue_wait_seconds_per_request"
    assert pods["target"] == {"type": "AverageValue", "averageValue": "50m"}
    assert one(objects, "PodDisruptionBudget")["spec"] == {
        "minAvailable": 1, "selector": {"matchLabels": {"app.kubernetes.io/name": "tensorgate",
                                                         "app.kubernetes.io/instance": "tg"}}}
    (spread,) = one(objects, "Deployment")["spec"]["template"]["spec"]["topologySpreadConstraints"]
    assert spread["labelSelector"]["matchLabels"]["app.kubernetes.io/instance"] == "tg"


def test_the_adapter_rules_serve_the_metric_names_the_chart_documents() -> None:
    adapter = yaml.safe_load((CHART / "examples" / "prometheus-adapter.yaml").read_text())
    served = {rule["name"]["as"] for rule in adapter["rules"]["custom"]}
    values_text = (CHART / "values.yaml").read_text()
    assert served == {"tensorgate_queue_wait_seconds_per_request", "tensorgate_inflight_requests_per_pod"}
    for name in served:
        assert name in values_text
    for name in VALUE_SETS:
        for hpa in by_kind(render_set(name), "HorizontalPodAutoscaler"):
            for metric in hpa["spec"]["metrics"]:
                if metric["type"] == "Pods":
                    assert metric["pods"]["metric"]["name"] in served, name


def test_the_readme_shows_the_adapter_rule_of_the_examples_file() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Deploy\n"):]
    block = next(b.split("\n", 1)[1] for b in section.split("```yaml")[1:] if "seriesQuery" in b)
    (rule,) = yaml.safe_load(block.split("```")[0])
    adapter = yaml.safe_load((CHART / "examples" / "prometheus-adapter.yaml").read_text())
    assert rule == adapter["rules"]["custom"][0]


def test_networking_headless_service_and_ingresses() -> None:
    objects = render_set("networking")
    services = {s["metadata"]["name"]: s for s in by_kind(objects, "Service")}
    assert services[f"{FULLNAME}-headless"]["spec"]["clusterIP"] == "None"
    assert one(objects, "Deployment")["spec"]["replicas"] == 3
    assert not by_kind(objects, "HorizontalPodAutoscaler")
    ingresses = {i["metadata"]["name"]: i for i in by_kind(objects, "Ingress")}
    rest_backend = ingresses[FULLNAME]["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    grpc_ingress = ingresses[f"{FULLNAME}-grpc"]
    grpc_backend = grpc_ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert rest_backend == {"name": FULLNAME, "port": {"name": "http"}}
    assert grpc_backend == {"name": FULLNAME, "port": {"name": "grpc"}}
    assert grpc_ingress["metadata"]["annotations"]["nginx.ingress.kubernetes.io/backend-protocol"] == "GRPC"


def test_the_chart_runs_the_image_the_dockerfile_builds() -> None:
    """Ports, model path, listen address and user agree between the Dockerfile and the chart."""
    instructions = DockerfileParser(str(ROOT / "Dockerfile")).structure
    final_stage = instructions[max(n for n, i in enumerate(instructions) if i["instruction"] == "FROM"):]
    env = " ".join(i["value"] for i in final_stage if i["instruction"] == "ENV")
    exposed = {int(p) for i in final_stage if i["instruction"] == "EXPOSE" for p in i["value"].split()}
    (user,) = [i["value"] for i in final_stage if i["instruction"] == "USER"]

    objects = render_set("defaults")
    container = server_container(objects)
    assert exposed == {p["containerPort"] for p in container["ports"]}
    assert "TENSORGATE_MODEL_REPO=/models" in env and "--model-repo=/models" in container["args"]
    assert "TENSORGATE_HOST=0.0.0.0" in env and "--host=0.0.0.0" in container["args"]
    security = one(objects, "Deployment")["spec"]["template"]["spec"]["securityContext"]
    assert user == f"{security['runAsUser']}:{security['runAsGroup']}"


def test_helm_test_pod_is_not_selected_by_the_service() -> None:
    objects = render_set("defaults")
    selector = one(objects, "Service")["spec"]["selector"]
    test_pod = one(objects, "Pod")
    assert test_pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    assert not selector.items() <= test_pod["metadata"]["labels"].items()


def test_notes_tell_how_to_reach_the_server() -> None:
    notes = render(load_values("networking"))["tensorgate/templates/NOTES.txt"]
    assert f"http://{FULLNAME}.{NAMESPACE}.svc:8000/v2" in notes
    assert f"port-forward svc/{FULLNAME}" in notes
    assert "https://tensorgate.example.com/v2" in notes
    assert f"dns:///{FULLNAME}-headless" in notes
    defaults_notes = render(None)["tensorgate/templates/NOTES.txt"]
    assert f"{FULLNAME}-models" in defaults_notes and "kubectl -n serving cp" in defaults_notes


# --- API keys, CORS and the NetworkPolicy -------------------------------------------------------------------


def _serve_settings(args: list[str]) -> Settings:
    """The container's arguments as `tensorgate serve` reads them (no TENSORGATE_* variable of this process)."""
    parser = argparse.ArgumentParser()
    add_serve_arguments(parser)
    return Settings.from_json(settings_from(parser.parse_args(args)).to_json())


def test_api_keys_come_from_the_secret_as_files_and_never_into_the_pod_spec() -> None:
    objects = render_set("api-keys")
    container = server_container(objects)
    args = container["args"]
    assert "--protect=model-repository,shared-memory:x-admin-key:/etc/tensorgate/api-keys/admin" in args
    assert "--protect=inference,statistics:x-api-key:/etc/tensorgate/api-keys/clients" in args
    assert "--cors-origins=https://app.example.com" in args
    mount = next(m for m in container["volumeMounts"] if m["name"] == "api-keys")
    assert mount == {"name": "api-keys", "mountPath": "/etc/tensorgate/api-keys", "readOnly": True}
    volumes = one(objects, "Deployment")["spec"]["template"]["spec"]["volumes"]
    assert next(v for v in volumes if v["name"] == "api-keys")["secret"] == {
        "secretName": "tensorgate-api-keys", "defaultMode": 0o440}
    assert not by_kind(objects, "Secret")  # the chart never holds a key
    assert not any("API_KEYS" in str(e.get("name")) for e in container.get("env", []))
    settings = _serve_settings(args)
    assert settings.cors_origins == ("https://app.example.com",) and len(settings.protect) == 2
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):  # health stays open: no key needed
        assert container[probe]["httpGet"]["path"].startswith("/v2/health/")


def test_no_access_settings_no_flags_no_secret_volume() -> None:
    container = server_container(render_set("defaults"))
    assert not [a for a in container["args"] if a.startswith(("--protect", "--open-groups", "--cors-"))]
    assert "api-keys" not in {m["name"] for m in container["volumeMounts"]}
    assert not by_kind(render_set("defaults"), "NetworkPolicy")


def test_open_groups_and_cors_settings_flow_to_the_server() -> None:
    args = server_container(manifests(render({"access": {"openGroups": ["model-repository"]}, "cors": {
        "origins": ["*"], "methods": ["GET", "POST", "PUT"], "headers": ["content-type", "x-trace"]}})))["args"]
    settings = _serve_settings(args)
    assert settings.open_groups == ("model-repository",) and settings.cors_origins == ("*",)
    assert settings.cors_methods == ("get", "post", "put") and settings.cors_headers == ("content-type", "x-trace")


def test_network_policy_admits_clients_to_rest_and_grpc_and_monitoring_to_metrics() -> None:
    policy = one(render_set("api-keys"), "NetworkPolicy")
    spec = policy["spec"]
    assert spec["podSelector"]["matchLabels"] == one(render_set("api-keys"), "Deployment")["spec"]["selector"][
        "matchLabels"]
    assert spec["policyTypes"] == ["Ingress"]
    serving, metrics = spec["ingress"]
    assert [p["port"] for p in serving["ports"]] == [8000, 8001]
    assert serving["from"][0]["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": "apps"}
    assert [p["port"] for p in metrics["ports"]] == [8002]
    assert metrics["from"] == [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]
    anyone = one(manifests(render({"networkPolicy": {"enabled": True, "from": [], "metricsFrom": []}})),
                 "NetworkPolicy")
    assert anyone["spec"]["ingress"] == [{"ports": [{"port": 8000, "protocol": "TCP"},
                                                    {"port": 8001, "protocol": "TCP"}]}]


# --- values the chart refuses --------------------------------------------------------------------------------


@pytest.mark.parametrize(("values", "message"), [
    ({"server": {"drainTimeoutSeconds": "30"}}, "at '/server/drainTimeoutSeconds': got string, want integer"),
    ({"server": {"drainTimout": 30}}, "at '/server': additional properties 'drainTimout' not allowed"),
    ({"server": {"frontends": 0}}, "at '/server/frontends'"),
    ({"server": {"logFormat": "yaml"}}, "at '/server/logFormat'"),
    ({"server": {"grpcServer": "grpcio"}}, "at '/server/grpcServer'"),
    ({"server": {"grpcKeepaliveSeconds": -1}}, "at '/server/grpcKeepaliveSeconds'"),
    ({"server": {"grpcMinPingIntervalSeconds": -1}}, "at '/server/grpcMinPingIntervalSeconds'"),
    ({"replicas": 3}, "additional properties 'replicas' not allowed"),
    ({"gpu": {"enabled": "yes"}}, "at '/gpu/enabled': got string, want boolean"),
    ({"gpu": {"count": 0}}, "at '/gpu/count'"),
    ({"modelRepository": {"source": "s3"}}, "at '/modelRepository/source'"),
    ({"autoscaling": {"customMetric": {"name": "queue wait"}}}, "at '/autoscaling/customMetric/name'"),
    ({"service": {"type": "ExternalName"}}, "at '/service/type'"),
    ({"server": {"ports": {"http": 70000}}}, "at '/server/ports/http'"),
    ({"monitoring": {"serviceMonitor": {"interval": "30 seconds"}}}, "at '/monitoring/serviceMonitor/interval'"),
    ({"podDisruptionBudget": {"minAvailable": "half"}}, "at '/podDisruptionBudget/minAvailable'"),
    ({"ingress": {"hosts": [{"host": "a", "paths": [{"path": "/", "pathtype": "Prefix"}]}]}},
     "additional properties 'pathtype' not allowed"),
    ({"access": {"rules": [{"groups": ["inferense"], "header": "x-api-key", "secretKey": "k"}]}},
     "at '/access/rules/0/groups/0'"),
    ({"access": {"rules": [{"groups": ["inference"], "header": "x-api-key"}]}}, "missing property 'secretKey'"),
    ({"access": {"openGroups": ["inference"]}}, "at '/access/openGroups/0'"),
    ({"cors": {"origins": "https://a.example"}}, "at '/cors/origins': got string, want array"),
    ({"networkPolicy": {"from": [{"namespace": "apps"}]}}, "additional properties 'namespace' not allowed"),
    ({"tls": {"enabled": "yes"}}, "at '/tls/enabled': got string, want boolean"),
    ({"tls": {"secretname": "tg-tls"}}, "at '/tls': additional properties 'secretname' not allowed"),
    ({"tls": {"secretName": "TG_TLS"}}, "at '/tls/secretName'"),
    ({"tls": {"clientAuth": {"key": ""}}}, "at '/tls/clientAuth/key'"),
    ({"server": {"ports": {"health": 0}}}, "at '/server/ports/health'"),
])
def test_bad_values_are_rejected_with_a_message_naming_the_key(values: dict[str, Any], message: str) -> None:
    with helm.Chart.load(CHART) as chart:
        with pytest.raises(helm.HelmValuesError) as schema_error:
            chart.validate_schema(values)
        assert message in str(schema_error.value)
    with pytest.raises(helm.HelmValuesError) as render_error:  # `helm install` refuses them the same way
        render(values)
    assert message in str(render_error.value)
    report = helm.lint(CHART, values, strict=True)
    assert any(message in m["error"] for m in report["messages"]), report


@pytest.mark.parametrize(("values", "message"), [
    ({"modelRepository": {"source": "image"}},
     "modelRepository.image.repository is required when modelRepository.source is image"),
    ({"modelRepository": {"source": "volume"}}, "modelRepository.volume must be a volume source"),
    ({"terminationGracePeriodSeconds": 30},
     "terminationGracePeriodSeconds (30) must exceed preStopSleepSeconds + server.drainTimeoutSeconds (35)"),
    ({"autoscaling": {"cpu": {"enabled": False}}}, "autoscaling.enabled needs autoscaling.cpu.enabled"),
    ({"autoscaling": {"minReplicas": 5, "maxReplicas": 2}}, "autoscaling.minReplicas (5) is above"),
    ({"access": {"rules": [{"groups": ["inference"], "header": "x-api-key", "secretKey": "k"}]}},
     "access.rules need access.existingSecret"),
    ({"access": {"existingSecret": "s", "rules": [{"groups": ["health"], "header": "x-api-key", "secretKey": "k"}]}},
     "access.rules: keep health open"),
    ({"access": {"existingSecret": "s", "rules": [{"groups": ["metrics"], "header": "x-api-key", "secretKey": "k"}]},
      "monitoring": {"serviceMonitor": {"enabled": True}}}, "metrics cannot be protected with the ServiceMonitor on"),
    ({"tls": {"enabled": True}}, "tls.secretName is required when tls.enabled"),
    ({"tls": {"clientAuth": {"enabled": True}}}, "tls.clientAuth.enabled needs tls.enabled"),
    ({"tls": {"enabled": True, "secretName": "tg-tls", "clientAuth": {"enabled": True}},
      "monitoring": {"serviceMonitor": {"enabled": True}}},
     "monitoring.serviceMonitor.tlsConfig needs cert and keySecret"),
])
def test_inconsistent_values_fail_the_render_with_a_message_naming_the_key(values: dict[str, Any],
                                                                           message: str) -> None:
    with pytest.raises(helm.HelmRenderError) as error:
        render(values)
    assert message in str(error.value)


# --- TLS -------------------------------------------------------------------------------------------------------


def _volume(objects: tuple[dict[str, Any], ...] | list[dict[str, Any]], name: str) -> dict[str, Any]:
    volumes = one(objects, "Deployment")["spec"]["template"]["spec"]["volumes"]
    volume: dict[str, Any] = next(v for v in volumes if v["name"] == name)
    return volume


def test_tls_comes_from_a_secret_mounted_whole_and_read_only() -> None:
    """Whole-volume mounts are what the kubelet updates when cert-manager renews the Secret (a
    subPath mount never changes), so the server's reload sees the new files."""
    objects = render_set("tls")
    container = server_container(objects)
    assert {"--tls-cert=/etc/tensorgate/tls/tls.crt", "--tls-key=/etc/tensorgate/tls/tls.key"} <= set(container["args"])
    assert not any(a.startswith(("--tls-client-ca", "--health-port")) for a in container["args"])
    mount = next(m for m in container["volumeMounts"] if m["name"] == "tls")
    assert mount == {"name": "tls", "mountPath": "/etc/tensorgate/tls", "readOnly": True}
    assert _volume(objects, "tls")["secret"] == {"secretName": "tensorgate-tls", "defaultMode": 0o440}
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"]["port"] == "http" and container[probe]["httpGet"]["scheme"] == "HTTPS"
    service = {p["name"]: p for p in one(objects, "Service")["spec"]["ports"]}
    assert (service["http"]["appProtocol"], service["metrics"]["appProtocol"]) == ("https", "https")
    assert "appProtocol" not in service["grpc"]  # h2c would be wrong: gRPC over TLS
    endpoint = one(objects, "ServiceMonitor")["spec"]["endpoints"][0]
    assert endpoint["scheme"] == "https"
    assert endpoint["tlsConfig"] == {"ca": {"secret": {"name": "tensorgate-tls", "key": "ca.crt"}},
                                     "serverName": f"{FULLNAME}.{NAMESPACE}.svc"}


def test_mtls_probes_use_the_plain_health_port_kept_out_of_the_service() -> None:
    objects = render_set("mtls")
    container = server_container(objects)
    assert {"--tls-client-ca=/etc/tensorgate/client-ca/ca.crt", "--health-port=8003"} <= set(container["args"])
    assert {"name": "health", "containerPort": 8003, "protocol": "TCP"} in container["ports"]
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"]["port"] == "health" and "scheme" not in container[probe]["httpGet"]
    assert "health" not in {p["name"] for p in one(objects, "Service")["spec"]["ports"]}
    assert _volume(objects, "tls-client-ca")["secret"]["secretName"] == "tensorgate-client-ca"
    endpoint = one(objects, "ServiceMonitor")["spec"]["endpoints"][0]
    assert endpoint["tlsConfig"]["keySecret"] == {"name": "prometheus-client", "key": "tls.key"}
    assert endpoint["tlsConfig"]["ca"] == {"secret": {"name": "tensorgate-tls", "key": "ca.crt"}}
    test_pod = next(o for o in objects if o["kind"] == "Pod")
    volumes = {v["name"]: v["secret"]["secretName"] for v in test_pod["spec"]["volumes"]}
    assert volumes == {"tls": "tensorgate-tls", "test-client": "tensorgate-test-client"}
    assert "load_cert_chain" in test_pod["spec"]["containers"][0]["command"][2]


def test_notes_name_https_under_tls() -> None:
    notes = render(load_values("mtls"))["tensorgate/templates/NOTES.txt"]
    assert f"https://{FULLNAME}.{NAMESPACE}.svc:8000/v2" in notes and "--cert client.crt" in notes
    assert "https://" not in render(None)["tensorgate/templates/NOTES.txt"]


def test_the_client_ca_defaults_to_the_tls_secrets_ca() -> None:
    objects = manifests(render({"tls": {"enabled": True, "secretName": "tg-tls", "clientAuth": {"enabled": True}}}))
    container = server_container(objects)
    assert "--tls-client-ca=/etc/tensorgate/tls/ca.crt" in container["args"]
    volumes = one(objects, "Deployment")["spec"]["template"]["spec"]["volumes"]
    assert "tls-client-ca" not in {v["name"] for v in volumes}


def test_without_tls_nothing_changes() -> None:
    container = server_container(render_set("defaults"))
    assert not any(a.startswith(("--tls", "--health-port")) for a in container["args"])
    assert "tls" not in {m["name"] for m in container["volumeMounts"]}

"""The rendered Deployment against a real server: start `tensorgate serve` with exactly the
container's arguments and hit exactly the probe paths and ports the chart names, the gRPC port
the Service routes to, and the metrics path the ServiceMonitor scrapes.
"""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from benchmarks.server import free_port
from tests import model_factory
from tests.deploy.chart_helpers import CHART, manifests, one, render, server_container
from tests.server import ServerProcess
from tests.tls_certs import Authority

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The chart rendered with free ports, so the test server cannot clash with another one."""
    ports = {"http": free_port(), "grpc": free_port(), "metrics": free_port()}
    objects = manifests(render({"server": {"ports": ports},
                                "monitoring": {"serviceMonitor": {"enabled": True}}}))
    return {"objects": objects, "ports": ports}


@pytest.fixture(scope="module")
def chart_server(rendered: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    repo = tmp_path_factory.mktemp("chart") / "repo"
    repo.mkdir()
    model_factory.flat_identity_model(repo)
    args: list[str] = list(server_container(rendered["objects"])["args"])
    # The only two substitutions: the mounted repository's path, and loopback instead of all interfaces.
    args[args.index("--model-repo=/models")] = f"--model-repo={repo}"
    args[args.index("--host=0.0.0.0")] = "--host=127.0.0.1"
    ports = rendered["ports"]
    server = ServerProcess(repo, args, http_port=ports["http"], grpc_port=ports["grpc"],
                           metrics_port=ports["metrics"])
    server.start()
    yield server
    assert server.stop() == 0, server.log()


def _port(container: dict[str, Any], port: int | str) -> int:
    """A probe's port: a number, or the name of one of the container's ports."""
    if isinstance(port, int):
        return port
    numbers: dict[str, int] = {p["name"]: p["containerPort"] for p in container["ports"]}
    return numbers[port]


def test_every_probe_of_the_rendered_deployment_succeeds_on_a_real_server(
        rendered: dict[str, Any], chart_server: ServerProcess) -> None:
    container = server_container(rendered["objects"])
    assert {p["containerPort"] for p in container["ports"]} == set(rendered["ports"].values())
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        get = container[probe]["httpGet"]
        url = f"http://127.0.0.1:{_port(container, get['port'])}{get['path']}"
        reply = httpx.get(url)
        assert 200 <= reply.status_code < 400, (probe, url, reply.status_code, reply.text)


def test_the_service_ports_reach_rest_grpc_and_metrics(rendered: dict[str, Any],
                                                        chart_server: ServerProcess) -> None:
    objects = rendered["objects"]
    container = server_container(objects)
    targets = {p["name"]: _port(container, p["targetPort"]) for p in one(objects, "Service")["spec"]["ports"]}

    assert httpx.get(f"http://127.0.0.1:{targets['http']}/v2/models/flat_identity/ready").status_code == 200
    with grpc.insecure_channel(f"127.0.0.1:{targets['grpc']}") as channel:
        health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
    assert health.status == health_pb2.HealthCheckResponse.SERVING

    endpoint = one(objects, "ServiceMonitor")["spec"]["endpoints"][0]
    service_port = next(p for p in one(objects, "Service")["spec"]["ports"] if p["name"] == endpoint["port"])
    scrape = httpx.get(f"http://127.0.0.1:{_port(container, service_port['targetPort'])}{endpoint['path']}")
    assert scrape.status_code == 200 and "tensorgate_model_ready" in scrape.text


def test_the_prometheus_adapter_rules_read_series_the_server_exports(rendered: dict[str, Any],
                                                                       chart_server: ServerProcess) -> None:
    """Every metric the documented adapter rules query is one the running server exports."""
    reply = httpx.post(f"{chart_server.http_url}/v2/models/flat_identity/infer",
                       json={"inputs": [{"name": "x", "shape": [3], "datatype": "FP32", "data": [1, 2, 3]}]})
    assert reply.status_code == 200, reply.text
    exported = {line.split("{")[0].split(" ")[0] for line in httpx.get(chart_server.metrics_url).text.splitlines()
                if line and not line.startswith("#")}
    adapter = yaml.safe_load((Path(CHART) / "examples" / "prometheus-adapter.yaml").read_text())
    for rule in adapter["rules"]["custom"]:
        series = rule["seriesQuery"].split("{")[0].strip("'\" ")
        assert series in exported, (series, sorted(exported))
        for name in ("tensorgate_queue_duration_seconds_sum", "tensorgate_queue_duration_seconds_count",
                     "tensorgate_inflight_requests"):
            if name in rule["metricsQuery"]:
                assert name in exported, (name, sorted(exported))


@pytest.fixture(scope="module", params=["tls", "mtls"])
def tls_chart(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A real server started with the container arguments of the chart rendered with TLS (or mTLS),
    the Secret's files (tls.crt, tls.key, ca.crt) made here in place of the mounted ones."""
    folder = tmp_path_factory.mktemp(f"chart-{request.param}")
    ca = Authority.create(folder, "ca")
    issued = ca.issue("server")
    secret = folder / "secret"
    secret.mkdir()
    for name, source in (("tls.crt", issued.cert), ("tls.key", issued.key), ("ca.crt", ca.cert)):
        (secret / name).write_bytes(source.read_bytes())
    ports = {"http": free_port(), "grpc": free_port(), "metrics": free_port(), "health": free_port()}
    tls: dict[str, Any] = {"enabled": True, "secretName": "tg-tls",
                           "clientAuth": {"enabled": request.param == "mtls"}}
    objects = manifests(render({"server": {"ports": ports}, "tls": tls}))
    repo = folder / "repo"
    repo.mkdir()
    model_factory.flat_identity_model(repo)
    args = [a.replace("/etc/tensorgate/tls", str(secret)) for a in server_container(objects)["args"]]
    args[args.index("--model-repo=/models")] = f"--model-repo={repo}"
    args[args.index("--host=0.0.0.0")] = "--host=127.0.0.1"
    server = ServerProcess(repo, args, http_port=ports["http"], grpc_port=ports["grpc"], metrics_port=ports["metrics"])
    server.start()
    yield {"objects": objects, "server": server, "mode": request.param, "ca": ca}
    assert server.stop() == 0, server.log()


def test_the_probes_work_with_tls_on(tls_chart: dict[str, Any]) -> None:
    """As the kubelet probes: HTTPS without checking the certificate, and never a client certificate."""
    container = server_container(tls_chart["objects"])
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        get = container[probe]["httpGet"]
        url = f"{get.get('scheme', 'HTTP').lower()}://127.0.0.1:{_port(container, get['port'])}{get['path']}"
        reply = httpx.get(url, verify=False)
        assert 200 <= reply.status_code < 400, (probe, url, reply.status_code, reply.text)
    rest = f"https://127.0.0.1:{_port(container, 'http')}/v2/health/ready"
    if tls_chart["mode"] == "mtls":  # why the probes cannot use the REST port there
        with pytest.raises(httpx.TransportError):
            httpx.get(rest, verify=False)
    else:
        assert httpx.get(rest, verify=ssl.create_default_context(cafile=tls_chart["ca"].cert)).status_code == 200

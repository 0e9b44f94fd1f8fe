"""End to end with a real Prometheus (Debian's `prometheus`): it scrapes a live server under
traffic every second and evaluates the rule file; its HTTP API then gives a plausible p99
latency, request rate and batch size for the batching model, agrees exactly with the server's
own counters and statistics, computes every recording rule and dashboard query, and raises the
alerts the traffic calls for.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.observability.observability import (
    BATCHING_MODEL,
    FAILING_MODEL,
    MAX_BATCH_SIZE,
    NO_PROMETHEUS,
    PROMETHEUS,
    REQUEST_TIMEOUT,
    RULES,
    Prometheus,
    Traffic,
    all_rules,
    dashboard_queries,
    finite,
    load_dashboard,
    substitute,
)
from tests.server import ServerProcess

pytestmark = [pytest.mark.slow, pytest.mark.skipif(PROMETHEUS is None, reason=NO_PROMETHEUS)]

JOB = "tensorgate"
MODEL = f'job="{JOB}", model="{BATCHING_MODEL}"'


@pytest.fixture
def prometheus(observed_server: ServerProcess, tmp_path: Path) -> Iterator[Prometheus]:
    server = Prometheus(tmp_path / "prometheus", [f"127.0.0.1:{observed_server.metrics_port}"], [RULES], job=JOB)
    server.start()
    try:
        yield server
    finally:
        server.stop()
    assert server.process is not None and server.process.returncode == 0, server.log()


def server_counter(server: ServerProcess, name: str, **labels: str) -> float:
    """Sum of a counter's samples on the server's own /metrics that carry ``labels``."""
    total = 0.0
    for family in text_string_to_metric_families(httpx.get(server.metrics_url).text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


def test_prometheus_computes_p99_rate_and_batch_size_from_a_live_server(
        observed_server: ServerProcess, prometheus: Prometheus) -> None:
    prometheus.wait_for(f'up{{job="{JOB}"}} == 1')
    traffic = Traffic(observed_server)
    # Batches from 8 concurrent clients until Prometheus has seen the executions counter grow in
    # three scrapes, so every rate has samples to work with.
    deadline = time.monotonic() + 120
    while not prometheus.query(f"changes(tensorgate_executions_total{{{MODEL}}}[1m]) >= 3"):
        assert time.monotonic() < deadline, f"Prometheus saw no traffic:\n{prometheus.log()}"
        traffic.successes(BATCHING_MODEL, clients=8, per_client=8)
    # The server creates a (model, outcome) series with its first request, which rate() cannot
    # count (there is no earlier sample): errors once more after Prometheus has seen the series.
    traffic.errors(BATCHING_MODEL, FAILING_MODEL)
    prometheus.wait_for(f'tensorgate_requests_total{{model="{FAILING_MODEL}", outcome="server_error"}}')
    traffic.errors(BATCHING_MODEL, FAILING_MODEL)
    traffic.restart_worker([BATCHING_MODEL, FAILING_MODEL])
    traffic.successes(BATCHING_MODEL, clients=8, per_client=4)

    # Prometheus catches up with the server's counters exactly (nothing else sends traffic now).
    success = server_counter(observed_server, "tensorgate_requests_total", model=BATCHING_MODEL, outcome="success")
    inferences = server_counter(observed_server, "tensorgate_inferences_total", model=BATCHING_MODEL)
    executions = server_counter(observed_server, "tensorgate_executions_total", model=BATCHING_MODEL)
    assert success >= traffic.sent[(BATCHING_MODEL, "success")]
    prometheus.wait_for(f'sum(tensorgate_requests_total{{{MODEL}, outcome="success"}}) == {success:.0f}')
    prometheus.wait_for(f"sum(tensorgate_executions_total{{{MODEL}}}) == {executions:.0f}")
    stats = httpx.get(f"{observed_server.http_url}/v2/models/{BATCHING_MODEL}/stats").json()["model_stats"][0]
    assert (stats["inference_count"], stats["execution_count"]) == (inferences, executions)

    # p99 latency of successful requests, from the histogram's bucket rates.
    p99 = prometheus.value("histogram_quantile(0.99, sum by (le) "
                           f"(rate(tensorgate_request_duration_seconds_bucket{{{MODEL}}}[5m])))")
    p50 = prometheus.value("histogram_quantile(0.5, sum by (le) "
                           f"(rate(tensorgate_request_duration_seconds_bucket{{{MODEL}}}[5m])))")
    assert finite(p99) and 0 < p50 <= p99 < REQUEST_TIMEOUT, (p50, p99)
    recorded_p99 = prometheus.value(f"namespace_job_model:tensorgate_request_duration_seconds:p99_rate2m{{{MODEL}}}")
    assert finite(recorded_p99) and 0 < recorded_p99 < REQUEST_TIMEOUT

    # Request rate: every outcome, and the recorded one.
    rate = prometheus.value(f"sum(rate(tensorgate_requests_total{{{MODEL}}}[5m]))")
    assert finite(rate) and rate > 0
    recorded_rate = prometheus.value(f"namespace_job_model:tensorgate_requests:rate2m{{{MODEL}}}")
    assert finite(recorded_rate) and recorded_rate > 0

    # Batch size: rows per execution, from the counters and from the batch size histogram.
    for expr in (f"sum(rate(tensorgate_inferences_total{{{MODEL}}}[5m])) "
                 f"/ sum(rate(tensorgate_executions_total{{{MODEL}}}[5m]))",
                 f"sum(rate(tensorgate_batch_size_sum{{{MODEL}}}[5m])) "
                 f"/ sum(rate(tensorgate_batch_size_count{{{MODEL}}}[5m]))",
                 f"namespace_job_model:tensorgate_batch_size:mean_rate2m{{{MODEL}}}"):
        batch = prometheus.value(expr)
        assert 1 <= batch <= MAX_BATCH_SIZE, (expr, batch)
    assert prometheus.value(f"sum(tensorgate_inferences_total{{{MODEL}}}) "
                            f"/ sum(tensorgate_executions_total{{{MODEL}}})") == inferences / executions

    # The alerts this traffic calls for: the failing model's errors, the restarted worker.
    alerts = prometheus.wait_for('ALERTS{alertname="TensorGateWorkerRestarting", framework="onnxruntime"}')
    assert alerts[0]["metric"]["severity"] == "warning"
    alerts = prometheus.wait_for(f'ALERTS{{alertname="TensorGateHighErrorRatio", model="{FAILING_MODEL}"}}')
    assert alerts[0]["metric"]["severity"] == "critical"
    assert not prometheus.query(f'ALERTS{{alertname="TensorGateHighErrorRatio", model="{BATCHING_MODEL}"}}')

    # Every rule evaluates without error and every recording rule has data.
    groups = prometheus.api("rules")["groups"]
    evaluated = {rule["name"]: rule for group in groups for rule in group["rules"]}
    for rule in all_rules():
        name = rule.get("record") or rule["alert"]
        assert evaluated[name]["health"] == "ok", evaluated[name]
        if "record" in rule:
            assert prometheus.query(f'{rule["record"]}{{job="{JOB}"}}'), f"{rule['record']} recorded nothing"

    # Every dashboard query returns data for this job and model.
    values = {"job": JOB, "model": BATCHING_MODEL, "__rate_interval": "30s"}
    for title, expr in dashboard_queries(load_dashboard()):
        query = substitute(expr, values)
        assert prometheus.query(query), f"{title}: {query!r} returned nothing"

"""Triton's metric names (``--metrics-compat triton``) end to end: a real Prometheus scrapes a live
server under traffic and answers the queries a team brings from Triton — request rate, mean queue
wait per request, mean batch size, the queue-time recipe of Triton's HPA example — and every
``nv_inference_*`` series it stores is exactly the server's own ``/v2/models/{m}/stats``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.observability.observability import (
    BATCHING_MODEL,
    FAILING_MODEL,
    MAX_BATCH_SIZE,
    NO_PROMETHEUS,
    PROMETHEUS,
    REQUEST_TIMEOUT,
    Prometheus,
    Traffic,
    finite,
)
from tests.server import ServerProcess

pytestmark = [pytest.mark.slow, pytest.mark.skipif(PROMETHEUS is None, reason=NO_PROMETHEUS)]

DELAY = f'model="{BATCHING_MODEL}", version="1"'
FAILING = f'model="{FAILING_MODEL}", version="1"'


@pytest.fixture
def prometheus(observed_server: ServerProcess, tmp_path: Path) -> Iterator[Prometheus]:
    server = Prometheus(tmp_path / "prometheus", [f"127.0.0.1:{observed_server.metrics_port}"], [], job="triton")
    server.start()
    try:
        yield server
    finally:
        server.stop()
    assert server.process is not None and server.process.returncode == 0, server.log()


def model_stats(server: ServerProcess, model: str) -> dict[str, Any]:
    stats: dict[str, Any] = httpx.get(f"{server.http_url}/v2/models/{model}/stats",
                                      timeout=REQUEST_TIMEOUT).json()["model_stats"][0]
    return stats


def counts(stats: dict[str, Any]) -> tuple[int, int]:
    inference = stats["inference_stats"]
    return inference["success"]["count"], inference["fail"]["count"]


def value_at(prometheus: Prometheus, expr: str, at: float) -> float:
    """The one series of an instant query evaluated at ``at`` (seconds since the epoch)."""
    data = prometheus.api("query", query=expr, time=f"{at:.3f}")
    assert data["resultType"] == "vector" and len(data["result"]) == 1, (expr, data)
    return float(data["result"][0]["value"][1])


def test_triton_queries_agree_with_the_server_statistics(observed_server: ServerProcess,
                                                         prometheus: Prometheus) -> None:
    prometheus.wait_for('up{job="triton"} == 1')
    text = httpx.get(observed_server.metrics_url, timeout=REQUEST_TIMEOUT).text
    assert "\nnv_inference_request_success{" in text and "\ntensorgate_requests_total{" in text

    before = {model: counts(model_stats(observed_server, model)) for model in (BATCHING_MODEL, FAILING_MODEL)}
    traffic = Traffic(observed_server)
    # Batches from 8 concurrent clients until Prometheus has seen the execution count grow in
    # three scrapes; `during` is a moment inside the traffic, where the rate queries are evaluated.
    deadline = time.monotonic() + 120
    while not prometheus.query(f"changes(nv_inference_exec_count{{{DELAY}}}[1m]) >= 3"):
        assert time.monotonic() < deadline, f"Prometheus saw no traffic:\n{prometheus.log()}"
        traffic.successes(BATCHING_MODEL, clients=8, per_client=8)
    during = time.time()
    traffic.errors(BATCHING_MODEL, FAILING_MODEL)  # one 400 (OTHER) to delay, one 500 (BACKEND) in failing
    sent = traffic.sent[(BATCHING_MODEL, "success")]

    # The statistics, once the worker has counted every request sent (a refused request is counted
    # when the frontend's note reaches the worker, just after its client has the answer).
    expected = {BATCHING_MODEL: (before[BATCHING_MODEL][0] + sent, before[BATCHING_MODEL][1] + 1),
                FAILING_MODEL: (before[FAILING_MODEL][0], before[FAILING_MODEL][1] + 1)}
    deadline = time.monotonic() + 60
    while {model: counts(model_stats(observed_server, model)) for model in expected} != expected:
        assert time.monotonic() < deadline, {model: model_stats(observed_server, model) for model in expected}
        time.sleep(0.1)
    stats = {model: model_stats(observed_server, model) for model in expected}

    # Every Triton series Prometheus stores is the statistics' number (ns as whole µs), once it
    # has scraped the server after the last request.
    for model, selector in ((BATCHING_MODEL, DELAY), (FAILING_MODEL, FAILING)):
        model_stat = stats[model]
        inference = model_stat["inference_stats"]
        prometheus.wait_for(f"sum(nv_inference_request_failure{{{selector}}}) == {inference['fail']['count']}")
        for name, value in {
            "nv_inference_request_success": inference["success"]["count"],
            "nv_inference_count": model_stat["inference_count"],
            "nv_inference_exec_count": model_stat["execution_count"],
            "nv_inference_request_duration_us": inference["success"]["ns"] // 1000,
            "nv_inference_queue_duration_us": inference["queue"]["ns"] // 1000,
            "nv_inference_compute_input_duration_us": inference["compute_input"]["ns"] // 1000,
            "nv_inference_compute_infer_duration_us": inference["compute_infer"]["ns"] // 1000,
            "nv_inference_compute_output_duration_us": inference["compute_output"]["ns"] // 1000,
            "nv_inference_pending_request_count": 0,
        }.items():
            assert prometheus.value(f"{name}{{{selector}}}") == value, name
    # The failing model's requests all failed inside the model: Triton's BACKEND.
    assert prometheus.value(f'nv_inference_request_failure{{{FAILING}, reason="BACKEND"}}') == \
        stats[FAILING_MODEL]["inference_stats"]["fail"]["count"]
    assert prometheus.value(f'nv_inference_request_failure{{{DELAY}, reason="OTHER"}}') >= 1
    assert prometheus.value(f'nv_inference_request_failure{{{DELAY}, reason="CANCELED"}}') == 0

    # Triton-style queries: mean queue wait per successful request, in µs ...
    delay = stats[BATCHING_MODEL]["inference_stats"]
    per_request = prometheus.query("sum by (model) (nv_inference_queue_duration_us) "
                                   "/ sum by (model) (nv_inference_request_success)")
    by_model = {series["metric"]["model"]: float(series["value"][1]) for series in per_request}
    assert by_model[BATCHING_MODEL] == (delay["queue"]["ns"] // 1000) / delay["success"]["count"]
    # ... the queue gauge, Triton's pending count, is the server's queue depth at every scrape ...
    assert prometheus.value(f"max_over_time(abs(nv_inference_pending_request_count{{{DELAY}}} "
                            f"- on(job, instance, model, version) tensorgate_queue_depth{{{DELAY}}})[5m:1s])") == 0
    # ... and, inside the traffic, the request rate, the mean batch size and the HPA example's
    # average queue time per request over 30 s.
    rate = value_at(prometheus, f"rate(nv_inference_request_success{{{DELAY}}}[1m])", during)
    assert finite(rate) and rate > 0
    assert rate == value_at(prometheus, f"sum by (model) (rate(nv_inference_request_success{{{DELAY}}}[1m]))",
                            during)
    batch = value_at(prometheus, f"sum(rate(nv_inference_count{{{DELAY}}}[1m])) "
                                 f"/ sum(rate(nv_inference_exec_count{{{DELAY}}}[1m]))", during)
    assert 1 <= batch <= MAX_BATCH_SIZE
    queue_us = value_at(prometheus, f"delta(nv_inference_queue_duration_us{{{DELAY}}}[30s]) "
                                    f"/ (1 + delta(nv_inference_request_success{{{DELAY}}}[30s]))", during)
    assert finite(queue_us) and queue_us >= 0
    assert prometheus.value(f"nv_model_load_duration_secs{{{DELAY}}}") > 0

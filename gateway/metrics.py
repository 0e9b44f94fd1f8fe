"""Prometheus metrics of the gateway, served on their own port.

Request metrics are updated once per request; model and worker state are read from the
model manager only when Prometheus scrapes, so they cost nothing on the hot path.
"""

from collections.abc import Iterable
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from gateway.repository.manager import ModelManager

#: From 100 µs to 60 s, roughly x2.5 apart.
LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                   1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class Metrics:
    """The gateway's metric families, in a registry of their own (tests can run several servers)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "tensorgate_requests", "Inference requests by outcome.",
            ["model", "version", "protocol", "outcome"], registry=self.registry,
        )
        self.request_duration = Histogram(
            "tensorgate_request_duration_seconds", "Inference request latency inside the server.",
            ["model", "version", "protocol"], buckets=LATENCY_BUCKETS, registry=self.registry,
        )

    def observe_request(self, model: str, version: str, protocol: str, outcome: str, seconds: float) -> None:
        self.requests.labels(model, version, protocol, outcome).inc()
        if outcome == "success":
            self.request_duration.labels(model, version, protocol).observe(seconds)

    def watch(self, models: "ModelManager") -> None:
        """Report model state and worker restarts from ``models`` at scrape time."""
        self.registry.register(_ModelStateCollector(models))


class _ModelStateCollector(Collector):
    def __init__(self, models: "ModelManager") -> None:
        self._models = models

    def collect(self) -> Iterable[GaugeMetricFamily | CounterMetricFamily]:
        ready = GaugeMetricFamily("tensorgate_model_ready", "1 if the model version is ready, else 0.",
                                  labels=["model", "version"])
        depth = GaugeMetricFamily("tensorgate_queue_depth", "Requests waiting in the model version's queue.",
                                  labels=["model", "version"])
        for mv in self._models.all_versions():
            labels = [mv.name, "" if mv.version is None else str(mv.version)]
            ready.add_metric(labels, 1.0 if mv.state.value == "READY" else 0.0)
            if mv.scheduler is not None:
                depth.add_metric(labels, mv.scheduler.queued_requests)
        restarts = CounterMetricFamily("tensorgate_worker_restarts", "Runtime worker restarts.",
                                       labels=["framework"])
        for framework, count in self._models.restarts.items():
            restarts.add_metric([framework], count)
        yield ready
        yield depth
        yield restarts

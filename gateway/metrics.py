"""Prometheus metrics: counted where they happen, exported as one view by the supervisor.

Nothing here runs per request but ``RequestMetrics.observe_request`` (a dict lookup, two adds
and a bisect, in the frontend that answered). The supervisor serves ``--metrics-port``: at
each scrape it asks every frontend for its request series and every runtime worker for its
models' statistics, sums them, and renders the families, so a scrape sees every process's
samples whatever the number of frontends. Base units, labels ``model`` and ``version`` (plus
``protocol``, ``outcome``, ``phase``, ``state``, ``framework``, ``process`` where they fit).

``--metrics-compat triton`` adds Triton's per-model families (``nv_inference_*``, see
``render_triton``) computed from the same statistics as ``/v2/models/stats``; ours stay.
"""

from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from gateway.contract import FrontendState, ModelGauges
from gateway.histogram import Histogram
from gateway.process_metrics import labelled
from gateway.repository.repository import ModelVersion, State
from gateway.scheduling.stats import FAILURE_REASONS, ModelStats

#: ``cancelled``: the client went away (hung up, cancelled the call, or its deadline passed) before its answer.
OUTCOMES = ("success", "client_error", "server_error", "rejected", "timeout", "cancelled")
PROTOCOLS = ("rest", "grpc")


@dataclass(slots=True)
class _RequestSeries:
    outcomes: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    latency: Histogram = field(default_factory=Histogram)


class RequestMetrics:
    """A frontend's request outcomes and latency per model, version and protocol."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self._requests: dict[tuple[str, str, str], _RequestSeries] = {}

    def observe_request(self, model: str, version: str, protocol: str, outcome: str, seconds: float) -> None:
        if not self.enabled:
            return
        key = (model, version, protocol)
        series = self._requests.get(key)
        if series is None:
            series = self._requests[key] = _RequestSeries()
        series.outcomes[outcome] += 1
        if outcome == "success":
            series.latency.observe(seconds)

    def snapshot(self) -> dict[tuple[str, str, str], tuple[dict[str, int], list[int], float]]:
        return {key: (dict(s.outcomes), list(s.latency.counts), s.latency.sum) for key, s in self._requests.items()}


@dataclass(slots=True)
class ServerView:
    """Everything one scrape reports, gathered by the supervisor from its processes."""

    versions: list[ModelVersion]
    frontends: list[FrontendState]
    models: dict[str, ModelGauges]
    #: process label (supervisor, frontend-N, worker-FRAMEWORK) -> its process_* and python_* families.
    processes: dict[str, list[Metric]]
    workers_up: dict[str, bool]
    worker_restarts: dict[str, int]


def render(view: ServerView, compat: str = "none") -> bytes:
    """The Prometheus text exposition of ``view``; ``compat="triton"`` adds Triton's families."""
    registry = CollectorRegistry()
    registry.register(_Families(view))
    text = generate_latest(registry)
    if compat == "triton":
        text += render_triton(view)
    return text


class _Families(Collector):
    def __init__(self, view: ServerView) -> None:
        self._view = view

    def collect(self) -> Iterable[Metric]:
        yield from self._requests()
        yield from self._model_versions()
        yield from self._processes()

    def _requests(self) -> Iterable[Metric]:
        total = CounterMetricFamily("tensorgate_requests", "Inference requests by outcome.",
                                    labels=["model", "version", "protocol", "outcome"])
        latency = HistogramMetricFamily("tensorgate_request_duration_seconds",
                                        "Latency of successful inference requests inside the server.",
                                        labels=["model", "version", "protocol"])
        merged: dict[tuple[str, str, str], _RequestSeries] = defaultdict(_RequestSeries)
        for frontend in self._view.frontends:
            for key, (outcomes, counts, total_s) in frontend.requests.items():
                series = merged[key]
                for outcome, count in outcomes.items():
                    series.outcomes[outcome] += count
                series.latency.add(counts, total_s)
        # Every served version's series exist from its load on, at 0, so rate() sees the first request.
        for mv in self._view.versions:
            if mv.version is not None:
                for protocol in PROTOCOLS:
                    merged.setdefault((mv.name, str(mv.version), protocol), _RequestSeries())
        for key in sorted(merged):
            series = merged[key]
            for outcome in OUTCOMES:
                total.add_metric([*key, outcome], series.outcomes.get(outcome, 0))
            latency.add_metric(list(key), series.latency.cumulative(), series.latency.sum)
        yield total
        yield latency

    def _model_versions(self) -> Iterable[Metric]:
        ready = GaugeMetricFamily("tensorgate_model_ready", "1 if the model version is ready, else 0.",
                                  labels=["model", "version"])
        depth = GaugeMetricFamily("tensorgate_queue_depth", "Requests waiting in the model version's queue.",
                                  labels=["model", "version"])
        capacity = GaugeMetricFamily("tensorgate_queue_capacity",
                                     "Requests the model version's queue holds before it rejects (max_queue_size).",
                                     labels=["model", "version"])
        inflight = GaugeMetricFamily("tensorgate_inflight_requests",
                                     "Requests accepted by the scheduler and not yet answered (queued or running).",
                                     labels=["model", "version"])
        queue = HistogramMetricFamily("tensorgate_queue_duration_seconds", "Time requests waited in the queue.",
                                      labels=["model", "version"])
        compute = HistogramMetricFamily(
            "tensorgate_compute_duration_seconds",
            "Time per executed batch: input (assembly and transfer), infer (the model), output (return and split).",
            labels=["model", "version", "phase"])
        batch = HistogramMetricFamily("tensorgate_batch_size", "Rows per executed batch.", labels=["model", "version"])
        executions = CounterMetricFamily("tensorgate_executions", "Batches executed.", labels=["model", "version"])
        inferences = CounterMetricFamily("tensorgate_inferences", "Rows inferred (a batch of N counts N).",
                                         labels=["model", "version"])
        state = GaugeMetricFamily(
            "tensorgate_model_state",
            "1 for the model version's current state, 0 for the others (" + ", ".join(s.value for s in State) + ").",
            labels=["model", "version", "state"])
        loads = CounterMetricFamily("tensorgate_model_loads", "Model version loads by outcome.",
                                    labels=["model", "version", "outcome"])
        load_time = HistogramMetricFamily("tensorgate_model_load_duration_seconds", "Time to load a model version.",
                                          labels=["model", "version"])
        unloads = CounterMetricFamily("tensorgate_model_unloads", "Model version unloads.", labels=["model", "version"])
        unload_time = HistogramMetricFamily("tensorgate_model_unload_duration_seconds",
                                            "Time to unload a model version.", labels=["model", "version"])
        for mv in self._view.versions:
            labels = [mv.name, "" if mv.version is None else str(mv.version)]
            ready.add_metric(labels, 1.0 if mv.state is State.READY else 0.0)
            for each in State:
                state.add_metric([*labels, each.value], 1.0 if mv.state is each else 0.0)
            for outcome, count in (("success", mv.loads_succeeded), ("failure", mv.loads_failed)):
                loads.add_metric([*labels, outcome], count)
            load_time.add_metric(labels, mv.load_time.cumulative(), mv.load_time.sum)
            unloads.add_metric(labels, mv.unloads)
            unload_time.add_metric(labels, mv.unload_time.cumulative(), mv.unload_time.sum)
            gauges = self._view.models.get(mv.key) if mv.version is not None else None
            if gauges is None:
                continue
            stats = gauges.stats
            depth.add_metric(labels, gauges.queued)
            capacity.add_metric(labels, gauges.capacity)
            inflight.add_metric(labels, gauges.inflight)
            queue.add_metric(labels, stats.queue_seconds.cumulative(), stats.queue_seconds.sum)
            for phase, histogram in stats.phase_seconds.items():
                compute.add_metric([*labels, phase], histogram.cumulative(), histogram.sum)
            batch.add_metric(labels, stats.batch_rows.cumulative(), stats.batch_rows.sum)
            executions.add_metric(labels, stats.execution_count)
            inferences.add_metric(labels, stats.inference_count)
        yield from (ready, state, depth, capacity, inflight, queue, compute, batch, executions, inferences, loads,
                    load_time, unloads, unload_time)

    def _processes(self) -> Iterable[Metric]:
        up = GaugeMetricFamily("tensorgate_worker_up", "1 while the framework's runtime worker is running.",
                               labels=["framework"])
        restarts = CounterMetricFamily("tensorgate_worker_restarts", "Runtime worker restarts.", labels=["framework"])
        view = self._view
        for framework in sorted(set(view.workers_up) | set(view.worker_restarts)):
            if framework in view.workers_up:
                up.add_metric([framework], 1.0 if view.workers_up[framework] else 0.0)
            restarts.add_metric([framework], view.worker_restarts.get(framework, 0))
        yield from (up, restarts)
        yield from labelled(view.processes)


# --- Triton's names (--metrics-compat triton) ------------------------------------------------------


def _us(ns: int) -> int:
    """Whole microseconds of a nanosecond total (Triton's latency counters count microseconds)."""
    return ns // 1000


#: Triton's per-model counters and gauges, each read from a loaded version's statistics: (name,
#: Prometheus type, help, value). Each is exactly a number of ``/v2/models/stats`` (nanoseconds
#: become whole microseconds): counters are cumulative since the version's worker loaded it, as
#: Triton's are since the model loaded. Durations are per request, as Triton's: each request of a
#: batch counts the batch's compute time; request duration and compute count successful requests,
#: queue wait every request that left the queue for a batch.
TRITON_FAMILIES: tuple[tuple[str, str, str, Callable[[ModelStats, ModelGauges], int]], ...] = (
    ("nv_inference_request_success", "counter",
     "Successful inference requests (a request counts 1 whatever its batch size).",
     lambda stats, _: stats.success.count),
    ("nv_inference_count", "counter",
     "Inferences performed (a request of N rows counts N).",
     lambda stats, _: stats.inference_count),
    ("nv_inference_exec_count", "counter",
     "Batches executed (nv_inference_count / nv_inference_exec_count is the mean batch size).",
     lambda stats, _: stats.execution_count),
    ("nv_inference_request_duration_us", "counter",
     "Cumulative time of successful requests in the server, from receipt to answer, in microseconds.",
     lambda stats, _: _us(stats.success.ns)),
    ("nv_inference_queue_duration_us", "counter",
     "Cumulative time requests waited in the model's queue, in microseconds.",
     lambda stats, _: _us(stats.queue.ns)),
    ("nv_inference_compute_input_duration_us", "counter",
     "Cumulative time requests spent preparing inputs (batch assembly and transfer), in microseconds.",
     lambda stats, _: _us(stats.compute_input.ns)),
    ("nv_inference_compute_infer_duration_us", "counter",
     "Cumulative time requests spent in the model's execution, in microseconds.",
     lambda stats, _: _us(stats.compute_infer.ns)),
    ("nv_inference_compute_output_duration_us", "counter",
     "Cumulative time requests spent returning outputs, in microseconds.",
     lambda stats, _: _us(stats.compute_output.ns)),
    ("nv_inference_pending_request_count", "gauge",
     "Requests accepted by the model's scheduler and waiting in its queue (not yet executing).",
     lambda _, gauges: gauges.queued),
)
_FAILURE_HELP = ("Failed inference requests by reason: REJECTED (queue full or queue timeout), CANCELED (the client "
                 "went away first), "
                 "BACKEND (the model's execution failed), OTHER.")
_LOAD_TIME_HELP = "Time the model version's last load took, in seconds."


def _label_value(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _sample(name: str, labels: dict[str, str], value: float) -> str:
    pairs = ",".join(f'{key}="{_label_value(text)}"' for key, text in labels.items())
    return f"{name}{{{pairs}}} {value if isinstance(value, int) else repr(float(value))}\n"


def _cancelled(frontends: list[FrontendState]) -> dict[tuple[str, str], int]:
    """Requests whose client went away, by (model, version), counted by the frontends (REST and gRPC)."""
    counts: dict[tuple[str, str], int] = defaultdict(int)
    for frontend in frontends:
        for (model, version, _), (outcomes, _, _) in frontend.requests.items():
            counts[model, version] += outcomes.get("cancelled", 0)
    return counts


def render_triton(view: ServerView) -> bytes:
    """Triton's per-model families in the text exposition format, for every version a worker has
    loaded, with Triton's labels (``model``, ``version``; ``reason`` on failures). Written here
    rather than by prometheus_client, which names every counter ``*_total``: Triton's are not, and
    the queries users bring from Triton name them as Triton does."""
    loaded = [(mv, gauges) for mv in view.versions
              if mv.version is not None and (gauges := view.models.get(mv.key)) is not None]
    lines: list[str] = []
    for name, kind, help_text, value in TRITON_FAMILIES:
        lines += [f"# HELP {name} {help_text}\n", f"# TYPE {name} {kind}\n"]
        for mv, gauges in loaded:
            lines.append(_sample(name, {"model": mv.name, "version": str(mv.version)}, value(gauges.stats, gauges)))
    lines += ["# HELP nv_inference_request_failure " + _FAILURE_HELP + "\n",
              "# TYPE nv_inference_request_failure counter\n"]
    cancelled = _cancelled(view.frontends)
    for mv, gauges in loaded:
        stats: ModelStats = gauges.stats
        for reason in FAILURE_REASONS:
            count = stats.fail_reasons.get(reason, 0)
            if reason == "CANCELED":
                count += cancelled.get((mv.name, str(mv.version)), 0)
            lines.append(_sample("nv_inference_request_failure",
                                 {"model": mv.name, "version": str(mv.version), "reason": reason}, count))
    lines += [f"# HELP nv_model_load_duration_secs {_LOAD_TIME_HELP}\n", "# TYPE nv_model_load_duration_secs gauge\n"]
    for mv, _ in loaded:
        if mv.load_seconds is not None:
            lines.append(_sample("nv_model_load_duration_secs", {"model": mv.name, "version": str(mv.version)},
                                 mv.load_seconds))
    return "".join(lines).encode()


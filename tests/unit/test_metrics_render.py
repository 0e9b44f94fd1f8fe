"""gateway.metrics.render over a hand-built ServerView: the model lifecycle families (state, loads,
unloads), and Triton's families behind ``--metrics-compat triton``, whose every value is the
number ``/v2/models/stats`` reports for the same statistics."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.contract import ModelGauges
from gateway.metrics import TRITON_FAMILIES, ServerView, render
from gateway.protocol.errors import InferenceFailed, InvalidRequest, QueueTimeout, Unavailable
from gateway.repository.config import ModelConfig
from gateway.repository.layout import ModelEntry
from gateway.repository.repository import ModelVersion, State
from gateway.scheduling.stats import FAILURE_REASONS, ModelStats, failure_reason

TRITON_NAMES = {name for name, *_ in TRITON_FAMILIES} | {"nv_inference_request_failure", "nv_model_load_duration_secs"}


def _version(name: str, version: int | None, state: State) -> ModelVersion:
    config = ModelConfig(platform="onnx") if version is not None else None
    entry = ModelEntry(name, Path("/models") / name, config, (version,) if version is not None else ())
    return ModelVersion(name, version, entry, state, versions=(str(version),) if version is not None else ())


def _busy_stats(name: str, version: str) -> ModelStats:
    """Statistics with odd nanosecond totals, so whole microseconds are rounded down."""
    stats = ModelStats(name, version)
    stats.record_queue(1_500_999)
    stats.record_queue(2_000_001)
    stats.record_queue(7_777)
    stats.record_batch(size=5, requests=2, input_ns=10_123, infer_ns=4_000_999, output_ns=3_001)
    stats.record_batch(size=1, requests=1, input_ns=999, infer_ns=1_000_000, output_ns=500)
    stats.success.add(9_876_543)
    stats.success.add(123_456_789)
    stats.success.add(1_001)
    stats.record_failure(4_000, failure_reason(QueueTimeout("timed out"), executed=True))
    stats.record_failure(5_000, failure_reason(InferenceFailed("boom"), executed=True))
    stats.record_failure(6_000, failure_reason(InvalidRequest("bad priority"), executed=False))
    stats.record_failure(7_000)
    return stats


@pytest.fixture
def view() -> ServerView:
    ready = _version("digits", 2, State.READY)
    ready.loads_succeeded, ready.loads_failed, ready.load_seconds = 1, 2, 0.75
    ready.load_time.observe(0.75)
    ready.unloads = 3
    ready.unload_time.observe(0.5)
    ready.unload_time.observe(1.5)
    failed = _version("broken", 1, State.UNAVAILABLE)
    failed.loads_failed, failed.load_seconds = 1, 0.25
    loading = _version('odd"name\\x', 7, State.LOADING)
    unusable = _version("no_config", None, State.UNAVAILABLE)
    models = {
        ready.key: ModelGauges(_busy_stats("digits", "2"), queued=4, inflight=6, capacity=1024),
        loading.key: ModelGauges(ModelStats(loading.name, "7"), queued=0, inflight=0, capacity=16),
    }
    return ServerView([failed, ready, unusable, loading], [], models, {}, {}, {})


_LINE = re.compile(r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(?P<labels>.*)\})? (?P<value>\S+)$")
_LABEL = re.compile(r'(\w+)="((?:\\.|[^"\\])*)"')
_UNESCAPE = {"\\\\": "\\", '\\"': '"', "\\n": "\n"}


def _samples(text: bytes) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Sample name and labels -> value, with the names exactly as Prometheus stores them
    (prometheus_client's parser would rename a counter ``x`` to ``x_total``)."""
    found = {}
    for line in text.decode().splitlines():
        if line.startswith("#") or not line:
            continue
        match = _LINE.match(line)
        assert match, line
        labels = {key: re.sub(r"\\.", lambda m: _UNESCAPE[m.group()], value)
                  for key, value in _LABEL.findall(match["labels"] or "")}
        found[(match["name"], frozenset(labels.items()))] = float(match["value"])
    return found


def test_the_whole_exposition_parses(view: ServerView) -> None:
    families = list(text_string_to_metric_families(render(view, "triton").decode()))
    assert {family.name for family in families} >= TRITON_NAMES


def _value(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


def test_model_state_is_one_for_the_current_state_and_zero_for_the_others(view: ServerView) -> None:
    samples = _samples(render(view))
    expected = {("digits", "2"): State.READY, ("broken", "1"): State.UNAVAILABLE, ("no_config", ""): State.UNAVAILABLE,
                ('odd"name\\x', "7"): State.LOADING}
    for (model, version), current in expected.items():
        for state in State:
            value = _value(samples, "tensorgate_model_state", model=model, version=version, state=state.value)
            assert value == (1.0 if state is current else 0.0), (model, state)
        assert sum(value for (name, labels), value in samples.items()
                   if name == "tensorgate_model_state" and ("model", model) in labels) == 1.0


def test_loads_and_unloads_counts_and_durations_per_version(view: ServerView) -> None:
    samples = _samples(render(view))
    digits = {"model": "digits", "version": "2"}
    assert _value(samples, "tensorgate_model_loads_total", **digits, outcome="success") == 1
    assert _value(samples, "tensorgate_model_loads_total", **digits, outcome="failure") == 2
    assert _value(samples, "tensorgate_model_unloads_total", **digits) == 3
    assert _value(samples, "tensorgate_model_unload_duration_seconds_count", **digits) == 2
    assert _value(samples, "tensorgate_model_unload_duration_seconds_sum", **digits) == 2.0
    assert _value(samples, "tensorgate_model_unload_duration_seconds_bucket", **digits, le="1.0") == 1
    assert _value(samples, "tensorgate_model_load_duration_seconds_count", **digits) == 1
    # Every version has its series from the start, at 0, so increase() sees the first unload.
    for model, version in (("broken", "1"), ("no_config", "")):
        assert _value(samples, "tensorgate_model_unloads_total", model=model, version=version) == 0


def test_without_compat_no_triton_names(view: ServerView) -> None:
    names = {name for name, _ in _samples(render(view))}
    assert not {name for name in names if name.startswith("nv_")}
    assert render(view, "none") == render(view)


def test_triton_compat_adds_and_removes_nothing(view: ServerView) -> None:
    ours = render(view)
    both = render(view, "triton")
    assert both.startswith(ours)
    added = {name for name, _ in _samples(both)} - {name for name, _ in _samples(ours)}
    assert added == TRITON_NAMES


def test_triton_values_are_the_statistics_of_v2_models_stats(view: ServerView) -> None:
    samples = _samples(render(view, "triton"))
    [gauges] = [g for g in view.models.values() if g.stats.name == "digits" and g.stats.version == "2"]
    stats = gauges.stats.as_dict()
    inference = stats["inference_stats"]
    labels = {"model": "digits", "version": "2"}
    expected = {
        "nv_inference_request_success": inference["success"]["count"],
        "nv_inference_count": stats["inference_count"],
        "nv_inference_exec_count": stats["execution_count"],
        "nv_inference_request_duration_us": inference["success"]["ns"] // 1000,
        "nv_inference_queue_duration_us": inference["queue"]["ns"] // 1000,
        "nv_inference_compute_input_duration_us": inference["compute_input"]["ns"] // 1000,
        "nv_inference_compute_infer_duration_us": inference["compute_infer"]["ns"] // 1000,
        "nv_inference_compute_output_duration_us": inference["compute_output"]["ns"] // 1000,
        "nv_inference_pending_request_count": 4,
    }
    for name, value in expected.items():
        assert _value(samples, name, **labels) == value, name
    # The numbers by hand: 3 successes, 6 rows in 2 batches, 2 + 1 requests' compute.
    assert (expected["nv_inference_request_success"], expected["nv_inference_count"],
            expected["nv_inference_exec_count"]) == (3, 6, 2)
    assert expected["nv_inference_request_duration_us"] == (9_876_543 + 123_456_789 + 1_001) // 1000
    assert expected["nv_inference_queue_duration_us"] == 3_508  # 3_508_777 ns
    assert expected["nv_inference_compute_infer_duration_us"] == (4_000_999 * 2 + 1_000_000) // 1000
    reasons = {reason: _value(samples, "nv_inference_request_failure", **labels, reason=reason)
               for reason in FAILURE_REASONS}
    assert reasons == {"REJECTED": 1, "CANCELED": 0, "BACKEND": 1, "OTHER": 2}
    assert sum(reasons.values()) == inference["fail"]["count"]
    assert _value(samples, "nv_model_load_duration_secs", **labels) == 0.75


def test_triton_series_only_for_versions_a_worker_has_loaded(view: ServerView) -> None:
    samples = _samples(render(view, "triton"))
    models = {dict(labels)["model"] for name, labels in samples if name in TRITON_NAMES}
    assert models == {"digits", 'odd"name\\x'}
    loading = {"model": 'odd"name\\x', "version": "7"}
    assert _value(samples, "nv_inference_request_success", **loading) == 0
    assert all(_value(samples, "nv_inference_request_failure", **loading, reason=reason) == 0
               for reason in FAILURE_REASONS)
    # No load finished yet: no load time.
    assert ("nv_model_load_duration_secs", frozenset(loading.items())) not in samples


def test_triton_families_are_typed_and_named_as_triton_names_them(view: ServerView) -> None:
    """Counters without the _total suffix prometheus_client would add: Triton's own names."""
    text = render(view, "triton").decode()
    for name, kind, *_ in TRITON_FAMILIES:
        assert f"# TYPE {name} {kind}\n" in text
        assert f'\n{name}{{model="digits",version="2"}} ' in text
    assert "# TYPE nv_inference_request_failure counter\n" in text
    assert '\nnv_inference_request_failure{model="digits",version="2",reason="BACKEND"} 1\n' in text
    assert "_total" not in text.split(b"# HELP nv_".decode(), 1)[1]
    assert 'model="odd\\"name\\\\x"' in text


@pytest.mark.parametrize(("exc", "executed", "reason"), [
    (Unavailable("queue full"), False, "REJECTED"),
    (QueueTimeout("timed out"), True, "REJECTED"),
    (InferenceFailed("boom"), True, "BACKEND"),
    (InvalidRequest("bad input for the runtime"), True, "BACKEND"),
    (InvalidRequest("bad priority"), False, "OTHER"),
])
def test_failure_reasons_are_triton_s(exc: Exception, executed: bool, reason: str) -> None:
    assert failure_reason(exc, executed) == reason


def test_record_failure_keeps_the_reasons_adding_up_to_the_fail_count() -> None:
    stats = ModelStats("m", "1")
    stats.record_failure(10, "REJECTED")
    stats.record_failure(20)
    stats.record_failure(30, "no such reason")
    assert stats.fail.count == sum(stats.fail_reasons.values()) == 3
    assert stats.fail.ns == 60
    assert stats.fail_reasons == {"REJECTED": 1, "CANCELED": 0, "BACKEND": 0, "OTHER": 2}
    assert "fail_reasons" not in stats.as_dict()["inference_stats"]

"""``--tracing`` and the OTEL_* variables it reads: off by default, free when off, checked at start;
and the W3C traceparent parser that tracing and logs share."""

import argparse
import os
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.settings import Settings, SettingsError, add_serve_arguments, settings_from
from gateway.tracecontext import TraceParent, parse_traceparent
from gateway.tracing_env import otlp_protocol, sdk_disabled

OTEL_NAMES = ("OTEL_TRACES_EXPORTER", "OTEL_EXPORTER_OTLP_PROTOCOL", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
              "OTEL_TRACES_SAMPLER", "OTEL_TRACES_SAMPLER_ARG", "OTEL_SDK_DISABLED", "TENSORGATE_TRACING")


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in OTEL_NAMES:
        monkeypatch.delenv(name, raising=False)


def _parse(*argv: str) -> Settings:
    parser = argparse.ArgumentParser()
    add_serve_arguments(parser)
    return settings_from(parser.parse_args(list(argv)))


def test_tracing_is_off_by_default_and_on_with_the_flag_or_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    assert _parse().tracing is False
    assert _parse("--tracing").tracing is True
    assert _parse("--tracing", "false").tracing is False
    monkeypatch.setenv("TENSORGATE_TRACING", "true")
    assert _parse().tracing is True


def test_an_otlp_endpoint_alone_does_not_turn_tracing_on(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318")
    assert _parse().tracing is False


@pytest.mark.parametrize(("name", "value", "message"), [
    ("OTEL_TRACES_SAMPLER", "sometimes", "OTEL_TRACES_SAMPLER='sometimes': must be one of always_on, "),
    ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json", "OTEL_EXPORTER_OTLP_PROTOCOL='http/json': must be one of "
                                                 "http/protobuf, grpc"),
    ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "udp", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL='udp'"),
    ("OTEL_TRACES_EXPORTER", "zipkin", "OTEL_TRACES_EXPORTER='zipkin': --tracing exports with OTLP only"),
])
def test_a_bad_tracing_variable_is_refused_naming_it(monkeypatch: pytest.MonkeyPatch, name: str, value: str,
                                                      message: str) -> None:
    monkeypatch.setenv(name, value)
    assert _parse().tracing is False  # read only when tracing is on
    with pytest.raises(SettingsError, match="^" + message.replace("(", r"\(")):
        _parse("--tracing")


@pytest.mark.parametrize("argument", ["often", "1.5", "-0.1"])
def test_a_bad_sampling_ratio_is_refused(monkeypatch: pytest.MonkeyPatch, argument: str) -> None:
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "parentbased_traceidratio")
    monkeypatch.setenv("OTEL_TRACES_SAMPLER_ARG", argument)
    with pytest.raises(SettingsError, match=f"OTEL_TRACES_SAMPLER_ARG='{argument}': must be a sampling ratio"):
        _parse("--tracing")


def test_good_tracing_variables_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "ParentBased_TraceIdRatio")
    monkeypatch.setenv("OTEL_TRACES_SAMPLER_ARG", "0.25")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "otlp")
    assert _parse("--tracing").tracing is True


def test_protocol_and_sdk_disabled() -> None:
    assert otlp_protocol({}) == "http/protobuf"
    assert otlp_protocol({"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}) == "grpc"
    assert otlp_protocol({"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
                          "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/protobuf"}) == "http/protobuf"
    assert sdk_disabled({"OTEL_SDK_DISABLED": " TRUE "}) and not sdk_disabled({"OTEL_SDK_DISABLED": "false"})


def test_the_command_line_refuses_a_bad_tracing_variable(tmp_path: Path) -> None:
    env = {**os.environ, "OTEL_TRACES_SAMPLER": "sometimes"}
    done = subprocess.run([sys.executable, "-m", "gateway.cli", "serve", "--model-repo", str(tmp_path), "--tracing"],
                          env=env, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert "tensorgate serve: error: OTEL_TRACES_SAMPLER='sometimes': must be one of" in done.stderr


def test_a_frontend_without_tracing_never_imports_the_sdk() -> None:
    code = ("import sys, gateway.frontend, gateway.rest.infer, gateway.grpc.servicer; "
            "print(sorted(m for m in sys.modules if m.startswith(('opentelemetry.sdk', 'gateway.tracing.'))"
            " or m == 'gateway.tracing'))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert done.stdout.strip() == "[]"


# --- traceparent ---------------------------------------------------------------------------------------------

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
SPAN = "00f067aa0ba902b7"


def test_a_valid_traceparent() -> None:
    parent = parse_traceparent(f"00-{TRACE}-{SPAN}-01")
    assert parent == TraceParent(int(TRACE, 16), int(SPAN, 16), 1)
    assert parent.sampled and parent.trace_id_hex == TRACE and parent.span_id_hex == SPAN
    assert parse_traceparent(f" 00-{TRACE}-{SPAN}-00\t".encode()) == TraceParent(int(TRACE, 16), int(SPAN, 16), 0)
    assert not TraceParent(1, 1, 0).sampled


def test_a_future_version_may_add_fields() -> None:
    assert parse_traceparent(f"01-{TRACE}-{SPAN}-01-more") == TraceParent(int(TRACE, 16), int(SPAN, 16), 1)
    assert parse_traceparent(f"01-{TRACE}-{SPAN}-01") is not None


@pytest.mark.parametrize("value", [
    None, "", "garbage", f"00-{TRACE}-{SPAN}-01-extra", f"00-{TRACE}-{SPAN}-1", f"00-{TRACE.upper()}-{SPAN}-01",
    f"ff-{TRACE}-{SPAN}-01", f"00-{'0' * 32}-{SPAN}-01", f"00-{TRACE}-{'0' * 16}-01", f"00_{TRACE}-{SPAN}-01",
    f"00-{TRACE}-{SPAN}-0g", f"01-{TRACE}-{SPAN}-01x", f"00-{TRACE[:-1]}-{SPAN}0-01",
])
def test_an_invalid_traceparent_is_none(value: str | None) -> None:
    assert parse_traceparent(value) is None

"""gateway.logs.LineFormatter (both formats) and the access log's helpers (gateway.access_log)."""

import json
import logging
import sys

import pytest

from gateway.access_log import model_of_path, trace_id
from gateway.logs import LineFormatter, log_event, rfc3339


def _record(message: object, *args: object, exc: bool = False) -> logging.LogRecord:
    info = None
    if exc:
        try:
            raise ValueError("boom")
        except ValueError:
            info = sys.exc_info()
    record = logging.LogRecord("tests.lines", logging.WARNING, __file__, 1, message, args, info)
    record.created = 1796112472.25  # 2026-12-01T08:07:52.250Z
    return record


def _event_record(caplog: pytest.LogCaptureFixture, **fields: object) -> logging.LogRecord:
    logger = logging.getLogger("tests.lines.events")
    with caplog.at_level(logging.WARNING, logger=logger.name):
        log_event(logger, "model_loaded", level=logging.WARNING, **fields)
    (record,) = caplog.records
    record.created = 1796112472.25
    return record


def test_timestamps_are_rfc3339_utc_with_milliseconds() -> None:
    assert rfc3339(1796112472.25) == "2026-12-01T08:07:52.250Z"
    assert rfc3339(1796112472.0) == "2026-12-01T08:07:52.000Z"


def test_an_event_in_text(caplog: pytest.LogCaptureFixture) -> None:
    line = LineFormatter("frontend-1", "text").format(_event_record(caplog, model="a b", version=2, seconds=0.5))
    assert line == ('ts=2026-12-01T08:07:52.250Z level=warning process=frontend-1 logger=tests.lines.events '
                    'event=model_loaded model="a b" version=2 seconds=0.500')


def test_an_event_in_json_keeps_types_and_order(caplog: pytest.LogCaptureFixture) -> None:
    line = LineFormatter("worker-onnxruntime", "json").format(_event_record(caplog, model="a", version=2, ok=True))
    assert list(json.loads(line).items()) == [
        ("ts", "2026-12-01T08:07:52.250Z"), ("level", "warning"), ("process", "worker-onnxruntime"),
        ("logger", "tests.lines.events"), ("event", "model_loaded"), ("model", "a"), ("version", 2), ("ok", True)]


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_another_librarys_record_with_a_traceback_is_one_line(log_format: str) -> None:
    line = LineFormatter("supervisor", log_format).format(_record("failed %s", "here", exc=True))
    assert "\n" not in line
    if log_format == "json":
        fields = json.loads(line)
        assert (fields["event"], fields["msg"]) == ("log", "failed here")
        assert fields["exc"].startswith("Traceback") and "ValueError: boom" in fields["exc"]
    else:
        assert ' event=log msg="failed here" exc="Traceback (most recent call last):\\n' in line
        assert line.endswith('ValueError: boom"')


def test_control_characters_and_backslashes_are_escaped_in_text() -> None:
    line = LineFormatter("supervisor", "text").format(_record("a\tb\\c\rd"))
    assert line.endswith(' msg="a\\tb\\\\c\\rd"')


@pytest.mark.parametrize(("header", "expected"), [
    ("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", "4bf92f3577b34da6a3ce929d0e0e4736"),
    (b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00", "4bf92f3577b34da6a3ce929d0e0e4736"),
    ("00-4BF92F3577B34DA6A3CE929D0E0E4736-00F067AA0BA902B7-01", ""),  # uppercase hex is invalid by the spec
    ("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-later", "4bf92f3577b34da6a3ce929d0e0e4736"),
    ("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra", ""),  # version 00 has exactly 4 fields
    ("ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", ""),  # version ff is invalid
    ("00-00000000000000000000000000000000-00f067aa0ba902b7-01", ""),  # so is the all-zero trace id
    ("00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01", ""),  # 31 hex digits
    ("not a traceparent", ""),
    ("", ""),
    (None, ""),
])
def test_trace_id_of_a_traceparent(header: str | bytes | None, expected: str) -> None:
    assert trace_id(header) == expected


@pytest.mark.parametrize(("path", "expected"), [
    ("/v2/models/digits/infer", ("digits", "")),
    ("/v2/models/digits/versions/3/infer", ("digits", "3")),
    ("/v2/models/digits", ("digits", "")),
    ("/v2/models/digits/versions/3", ("digits", "3")),
    ("/v2/health/ready", ("", "")),
    ("/v2/repository/models/digits/load", ("digits", "")),
    ("/v2/repository/index", ("", "")),
])
def test_model_of_path(path: str, expected: tuple[str, str]) -> None:
    assert model_of_path(path) == expected

"""Command-line settings with TENSORGATE_* defaults, and logfmt event lines."""

import argparse
import logging
import os
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pytest

from gateway.logs import log_event
from gateway.settings import (
    MIB,
    Settings,
    SettingsError,
    add_serve_arguments,
    available_cpus,
    default_frontends,
    env_name,
    flag_name,
    settings_from,
)

ENV_NAMES = ["MODEL_REPO", "HOST", "HTTP_PORT", "GRPC_PORT", "METRICS_PORT", "LOG_LEVEL", "MAX_REQUEST_BYTES",
             "METRICS_COMPAT", "MODEL_CONTROL_MODE", "REPOSITORY_POLL_SECS", "LOAD_MODEL", "DRAIN_TIMEOUT",
             "FRONTENDS", "STRICT_READINESS", "LOG_FORMAT", "ACCESS_LOG"]


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ENV_NAMES:
        monkeypatch.delenv(f"TENSORGATE_{name}", raising=False)


def _parse(*argv: str) -> Settings:
    parser = argparse.ArgumentParser()
    add_serve_arguments(parser)
    return settings_from(parser.parse_args(list(argv)))


# --- settings --------------------------------------------------------------------------------------------------


def test_defaults() -> None:
    settings = _parse()
    assert settings.host == "127.0.0.1"
    assert (settings.http_port, settings.grpc_port, settings.metrics_port) == (8000, 8001, 8002)
    assert settings.model_repo == Path("model_repo")
    assert settings.log_level == "info"
    assert settings.max_request_bytes == 128 * MIB


def test_defaults_match_the_settings_dataclass() -> None:
    assert _parse() == Settings()


def test_command_line_flags() -> None:
    settings = _parse("--model-repo", "/models", "--host", "0.0.0.0", "--http-port", "9000", "--grpc-port", "9001",
                      "--metrics-port", "9002", "--log-level", "debug", "--max-request-bytes", "1024")
    assert settings == Settings(model_repo=Path("/models"), host="0.0.0.0", http_port=9000, grpc_port=9001,
                                metrics_port=9002, log_level="debug", max_request_bytes=1024)


def test_environment_overrides_the_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TENSORGATE_MODEL_REPO", "/srv/models")
    monkeypatch.setenv("TENSORGATE_HOST", "0.0.0.0")
    monkeypatch.setenv("TENSORGATE_HTTP_PORT", "18000")
    monkeypatch.setenv("TENSORGATE_GRPC_PORT", "18001")
    monkeypatch.setenv("TENSORGATE_METRICS_PORT", "18002")
    monkeypatch.setenv("TENSORGATE_LOG_LEVEL", "warning")
    monkeypatch.setenv("TENSORGATE_MAX_REQUEST_BYTES", "4096")
    assert _parse() == Settings(model_repo=Path("/srv/models"), host="0.0.0.0", http_port=18000, grpc_port=18001,
                                metrics_port=18002, log_level="warning", max_request_bytes=4096)


def test_environment_values_are_typed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TENSORGATE_HTTP_PORT", "18000")
    monkeypatch.setenv("TENSORGATE_MODEL_REPO", "/srv/models")
    settings = _parse()
    assert settings.http_port == 18000 and isinstance(settings.http_port, int)
    assert isinstance(settings.model_repo, Path)


def test_command_line_beats_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TENSORGATE_HTTP_PORT", "18000")
    assert _parse("--http-port", "9000").http_port == 9000


@pytest.mark.parametrize(("argv", "variable", "fragment"), [
    (("--log-level", "verbose"), ("LOG_LEVEL", "verbose"), "input should be 'debug', 'info', 'warning' or 'error'"),
    (("--http-port", "abc"), ("HTTP_PORT", "abc"), "input should be a valid integer"),
    (("--grpc-port", "70000"), ("GRPC_PORT", "70000"), "input should be less than or equal to 65535"),
    (("--metrics-port", "-1"), ("METRICS_PORT", "-1"), "input should be greater than or equal to 0"),
    (("--drain-timeout", "inf"), ("DRAIN_TIMEOUT", "inf"), "must be a finite number of seconds"),
    (("--frontends", "0"), ("FRONTENDS", "0"), "input should be greater than or equal to 1"),
    (("--strict-readiness", "maybe"), ("STRICT_READINESS", "maybe"), "input should be a valid boolean"),
    (("--log-format", "yaml"), ("LOG_FORMAT", "yaml"), "input should be 'text' or 'json'"),
    (("--access-log", "sometimes"), ("ACCESS_LOG", "sometimes"), "input should be a valid boolean"),
])
def test_a_bad_value_is_refused_naming_the_flag_or_the_variable(
        argv: tuple[str, ...], variable: tuple[str, str], fragment: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The environment is checked exactly as the flags are (it used to skip the choices check)."""
    with pytest.raises(SettingsError, match=f"^{argv[0]} '{argv[1]}': ") as flag_error:
        _parse(*argv)
    assert fragment in str(flag_error.value)
    name, value = variable
    monkeypatch.setenv(f"TENSORGATE_{name}", value)
    with pytest.raises(SettingsError, match=f"^TENSORGATE_{name}='{value}': ") as env_error:
        _parse()
    assert fragment in str(env_error.value)


def test_log_format_and_access_log(monkeypatch: pytest.MonkeyPatch) -> None:
    assert (_parse().log_format, _parse().access_log) == ("text", False)
    assert _parse("--log-format", "JSON", "--access-log").model_dump(include={"log_format", "access_log"}) == {
        "log_format": "json", "access_log": True}
    assert _parse("--access-log", "false").access_log is False
    monkeypatch.setenv("TENSORGATE_ACCESS_LOG", "true")
    monkeypatch.setenv("TENSORGATE_LOG_FORMAT", "json")
    assert (_parse().log_format, _parse().access_log) == ("json", True)


def test_every_bad_value_is_named_at_once() -> None:
    with pytest.raises(SettingsError) as error:
        _parse("--http-port", "x", "--frontends", "99")
    assert "--http-port 'x'" in str(error.value) and "--frontends '99'" in str(error.value)


def test_the_command_line_reports_a_bad_variable_in_one_line_and_exits_2(tmp_path: Path) -> None:
    env = {**os.environ, "TENSORGATE_HTTP_PORT": "abc"}
    done = subprocess.run([sys.executable, "-m", "gateway.cli", "serve", "--model-repo", str(tmp_path)],
                          env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert done.stderr.strip().endswith(
        "tensorgate serve: error: TENSORGATE_HTTP_PORT='abc': input should be a valid integer, "
        "unable to parse string as an integer")


def test_version() -> None:
    done = subprocess.run([sys.executable, "-m", "gateway.cli", "--version"], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == f"tensorgate {version('tensorgate')}"


def test_every_setting_has_a_flag_with_its_variable_in_the_help() -> None:
    parser = argparse.ArgumentParser()
    add_serve_arguments(parser)
    text = " ".join(parser.format_help().split())
    for field in Settings.model_fields:
        assert flag_name(field) in text and env_name(field) in text


def test_metrics_compat_is_none_unless_triton_is_asked_for(monkeypatch: pytest.MonkeyPatch) -> None:
    assert _parse().metrics_compat == "none"
    assert _parse("--metrics-compat", "triton").metrics_compat == "triton"
    monkeypatch.setenv("TENSORGATE_METRICS_COMPAT", "Triton")
    assert _parse().metrics_compat == "triton"
    assert _parse("--metrics-compat", "none").metrics_compat == "none"
    assert Settings.from_json(_parse().to_json()).metrics_compat == "triton"


def test_unknown_metrics_compat_is_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(SettingsError, match=r"^--metrics-compat 'tfserving': input should be 'none' or 'triton'"):
        _parse("--metrics-compat", "tfserving")
    monkeypatch.setenv("TENSORGATE_METRICS_COMPAT", "tfserving")
    with pytest.raises(SettingsError, match=r"^TENSORGATE_METRICS_COMPAT='tfserving': input should be"):
        _parse()


def test_model_control_modes() -> None:
    assert (Settings().model_control_mode, Settings().repository_poll_secs, Settings().load_models) == ("none", 15.0,
                                                                                                       ())
    settings = _parse("--model-control-mode", "explicit", "--load-model", "a", "--load-model", "b")
    assert (settings.model_control_mode, settings.load_models) == ("explicit", ("a", "b"))
    assert _parse("--model-control-mode", "poll", "--repository-poll-secs", "0.5").repository_poll_secs == 0.5
    assert _parse("--model-control-mode", "explicit", "--load-model", "*").load_models == ("*",)
    assert Settings.from_json(settings.to_json()) == settings  # what a frontend gets on its command line


def test_model_control_mode_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TENSORGATE_MODEL_CONTROL_MODE", "explicit")
    monkeypatch.setenv("TENSORGATE_LOAD_MODEL", "a, b")
    assert _parse().load_models == ("a", "b")
    assert _parse("--load-model", "c").load_models == ("c",)  # the command line wins


@pytest.mark.parametrize(("argv", "fragment"), [
    (("--load-model", "a"), "applies to --model-control-mode explicit only"),
    (("--model-control-mode", "explicit", "--load-model", "*", "--load-model", "a"), "give it alone"),
])
def test_load_model_outside_explicit_mode_or_star_with_names_is_refused(argv: tuple[str, ...], fragment: str) -> None:
    with pytest.raises(SettingsError, match=fragment):
        _parse(*argv)


@pytest.mark.parametrize("argv", [("--model-control-mode", "manual"), ("--repository-poll-secs", "0"),
                                  ("--repository-poll-secs", "soon")])
def test_bad_model_control_flags_are_rejected(argv: tuple[str, ...]) -> None:
    with pytest.raises(SettingsError, match=f"^{argv[0]} '{argv[1]}': "):
        _parse(*argv)


# --- log_event -------------------------------------------------------------------------------------------------


LOGGER = logging.getLogger("tests.unit.logs")


def _logged(caplog: pytest.LogCaptureFixture, **fields: Any) -> str:
    with caplog.at_level(logging.INFO, logger=LOGGER.name):
        log_event(LOGGER, "something_happened", **fields)
    (record,) = caplog.records
    return record.getMessage()


def test_event_with_plain_fields(caplog: pytest.LogCaptureFixture) -> None:
    assert _logged(caplog, model="resnet", version=3) == "event=something_happened model=resnet version=3"


def test_value_with_a_space_is_quoted(caplog: pytest.LogCaptureFixture) -> None:
    assert _logged(caplog, reason="worker gone") == 'event=something_happened reason="worker gone"'


def test_value_with_a_quote_is_quoted_and_escaped(caplog: pytest.LogCaptureFixture) -> None:
    assert _logged(caplog, reason='say "hi"') == r'event=something_happened reason="say \"hi\""'


def test_value_with_an_equals_sign_is_quoted(caplog: pytest.LogCaptureFixture) -> None:
    assert _logged(caplog, detail="a=b") == 'event=something_happened detail="a=b"'


def test_backslash_inside_a_quoted_value_is_escaped(caplog: pytest.LogCaptureFixture) -> None:
    assert _logged(caplog, path=r"C:\a b") == r'event=something_happened path="C:\\a b"'


def test_empty_value_is_an_empty_quoted_string(caplog: pytest.LogCaptureFixture) -> None:
    assert _logged(caplog, reason="") == 'event=something_happened reason=""'


def test_float_has_three_decimals(caplog: pytest.LogCaptureFixture) -> None:
    assert _logged(caplog, seconds=1.23456) == "event=something_happened seconds=1.235"


def test_event_without_fields(caplog: pytest.LogCaptureFixture) -> None:
    assert _logged(caplog).startswith("event=something_happened")


def test_event_uses_the_given_level(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger=LOGGER.name):
        log_event(LOGGER, "failed", level=logging.ERROR, code=1)
    (record,) = caplog.records
    assert record.levelno == logging.ERROR
    assert record.getMessage() == "event=failed code=1"


def test_event_below_the_level_is_not_logged(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger=LOGGER.name):
        log_event(LOGGER, "chatty", level=logging.DEBUG, x=1)
    assert caplog.records == []


def test_value_with_a_newline_stays_on_one_line(caplog: pytest.LogCaptureFixture) -> None:
    assert "\n" not in _logged(caplog, reason="line one\nline two")


@pytest.mark.parametrize(("cpu_max", "limit"), [("max 100000", None), ("150000 100000", 2), ("50000 100000", 1),
                                                 ("400000 100000", 4)])
def test_available_cpus_respects_a_container_quota(tmp_path: Path, cpu_max: str, limit: int | None) -> None:
    """A pod limited to 1.5 CPUs on a 64-core node is a 2-CPU machine, not a 64-CPU one."""
    quota = tmp_path / "cpu.max"
    quota.write_text(cpu_max + "\n")
    affinity = len(os.sched_getaffinity(0))
    assert available_cpus(quota) == (affinity if limit is None else min(affinity, limit))
    assert available_cpus(tmp_path / "missing") == affinity


def test_frontends_default_to_one_per_two_cpus_and_the_flag_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    assert default_frontends() == max(1, min(8, available_cpus() // 2))
    monkeypatch.setenv("TENSORGATE_FRONTENDS", "3")
    assert _parse().frontends == 3
    assert _parse("--frontends", "2").frontends == 2

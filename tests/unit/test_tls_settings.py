"""The TLS and health-port settings: what goes together, and what the variables accept."""

import argparse
from pathlib import Path

import pytest

from gateway.settings import Settings, SettingsError, add_serve_arguments, settings_from

VARIABLES = ["TENSORGATE_TLS_CERT", "TENSORGATE_TLS_KEY", "TENSORGATE_TLS_CLIENT_CA", "TENSORGATE_HEALTH_PORT"]


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in VARIABLES:
        monkeypatch.delenv(name, raising=False)


def _parse(*argv: str) -> Settings:
    parser = argparse.ArgumentParser()
    add_serve_arguments(parser)
    return settings_from(parser.parse_args(list(argv)))


def test_tls_is_off_by_default() -> None:
    settings = _parse()
    assert (settings.tls_cert, settings.tls_key, settings.tls_client_ca, settings.health_port) == (None, None, None, 0)


def test_tls_from_flags_and_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TENSORGATE_TLS_CERT", "/tls/tls.crt")
    monkeypatch.setenv("TENSORGATE_TLS_KEY", "/tls/tls.key")
    settings = _parse("--tls-client-ca", "/tls/ca.crt")
    assert (settings.tls_cert, settings.tls_key, settings.tls_client_ca) == (
        Path("/tls/tls.crt"), Path("/tls/tls.key"), Path("/tls/ca.crt"))
    assert Settings.from_json(settings.to_json()) == settings  # as the children get them


def test_an_empty_variable_means_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    """Helm's and Compose's way of leaving a variable out."""
    monkeypatch.setenv("TENSORGATE_TLS_CERT", "")
    monkeypatch.setenv("TENSORGATE_TLS_KEY", " ")
    assert _parse().tls_cert is None


@pytest.mark.parametrize(("argv", "fragment"), [
    (("--tls-cert", "c.pem"), "--tls-cert needs --tls-key as well"),
    (("--tls-key", "k.pem"), "--tls-key needs --tls-cert as well"),
    (("--tls-client-ca", "ca.pem"), "--tls-client-ca needs --tls-cert and --tls-key"),
    (("--health-port", "8000"), "--health-port 8000 is already --http-port"),
    (("--health-port", "8002"), "--health-port 8002 is already --metrics-port"),
    (("--health-port", "70000"), "--health-port '70000': "),
])
def test_settings_that_do_not_go_together_are_refused(argv: tuple[str, ...], fragment: str) -> None:
    with pytest.raises(SettingsError, match=fragment):
        _parse(*argv)

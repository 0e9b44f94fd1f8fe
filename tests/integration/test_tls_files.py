"""The TLS files over a server's life: refused at start when unusable, an expired certificate
served with a warning, and rotation (a Kubernetes Secret's symlink swap) while serving.
"""

from __future__ import annotations

import os
import re
import ssl
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from grpc_health.v1 import health_pb2, health_pb2_grpc

from benchmarks.server import free_port
from tests import model_factory
from tests.server import ROOT, ServerProcess
from tests.tls_certs import Authority, Issued, SecretVolume

pytestmark = pytest.mark.slow

#: Generous: the files are polled every couple of seconds by every process, on a busy machine.
ROTATION_TIMEOUT_S = 90.0
#: The processes that reload: the supervisor (metrics port) and every frontend (see tests/server.py).
RELOADING = 1 + int(os.environ.get("TENSORGATE_FRONTENDS", "2"))


def serve_once(repo: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``tensorgate serve`` that is expected to refuse to start: its exit status and output."""
    command = [sys.executable, "-m", "gateway.cli", "serve", "--model-repo", str(repo),
               "--http-port", str(free_port()), "--grpc-port", str(free_port()), "--metrics-port", str(free_port()),
               *args]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
                          env={**os.environ, **(env or {})})


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> Authority:
    return Authority.create(tmp_path_factory.mktemp("pki"), "ca")


@pytest.fixture(scope="module")
def empty_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = tmp_path_factory.mktemp("empty") / "repo"
    repo.mkdir()
    return repo


def _bad_files(ca: Authority, folder: Path) -> dict[str, tuple[list[str], str]]:
    """Each case: the TLS flags, and what the refusal must say (after the path it names)."""
    good = ca.issue("good")
    other = ca.issue("other")
    (folder / "empty.pem").write_text("\n")
    (folder / "garbage.pem").write_text("this is not a certificate\n")
    (folder / "a-directory").mkdir(exist_ok=True)
    key = serialization.load_pem_private_key(good.key.read_bytes(), password=None)
    (folder / "encrypted.key").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret")))
    missing = folder / "missing.pem"
    return {
        "cert missing": (["--tls-cert", str(missing), "--tls-key", str(good.key)],
                         f"--tls-cert {missing}: no such file"),
        "key missing": (["--tls-cert", str(good.cert), "--tls-key", str(missing)],
                        f"--tls-key {missing}: no such file"),
        "cert empty": (["--tls-cert", str(folder / "empty.pem"), "--tls-key", str(good.key)],
                       f"--tls-cert {folder / 'empty.pem'}: the file is empty"),
        "key empty": (["--tls-cert", str(good.cert), "--tls-key", str(folder / "empty.pem")],
                      f"--tls-key {folder / 'empty.pem'}: the file is empty"),
        "cert a directory": (["--tls-cert", str(folder / "a-directory"), "--tls-key", str(good.key)],
                             f"--tls-cert {folder / 'a-directory'}: is a directory"),
        "cert not PEM": (["--tls-cert", str(folder / "garbage.pem"), "--tls-key", str(good.key)],
                         f"--tls-cert {folder / 'garbage.pem'}: not a PEM certificate"),
        "key not PEM": (["--tls-cert", str(good.cert), "--tls-key", str(good.cert)],
                        f"--tls-key {good.cert}: not a PEM private key"),
        "key encrypted": (["--tls-cert", str(good.cert), "--tls-key", str(folder / "encrypted.key")],
                          f"--tls-key {folder / 'encrypted.key'}: the key is encrypted"),
        "key of another certificate": (["--tls-cert", str(good.cert), "--tls-key", str(other.key)],
                                       f"--tls-key {other.key}: does not match the certificate in --tls-cert "
                                       f"{good.cert}"),
        "client CA missing": (["--tls-cert", str(good.cert), "--tls-key", str(good.key),
                               "--tls-client-ca", str(missing)], f"--tls-client-ca {missing}: no such file"),
        "client CA not PEM": (["--tls-cert", str(good.cert), "--tls-key", str(good.key),
                               "--tls-client-ca", str(folder / "garbage.pem")],
                              f"--tls-client-ca {folder / 'garbage.pem'}: not PEM CA certificates"),
    }


BAD_FILES = ["cert missing", "key missing", "cert empty", "key empty", "cert a directory", "cert not PEM",
             "key not PEM", "key encrypted", "key of another certificate", "client CA missing", "client CA not PEM"]


@pytest.mark.parametrize("case", BAD_FILES)
def test_unusable_files_refuse_to_start(ca: Authority, empty_repo: Path, tmp_path: Path, case: str) -> None:
    cases = _bad_files(ca, tmp_path)
    assert sorted(cases) == sorted(BAD_FILES)
    args, message = cases[case]
    result = serve_once(empty_repo, *args)
    assert result.returncode == 1, result
    assert "event=startup_failed" in result.stderr and message in result.stderr, result.stderr
    assert "frontend_started" not in result.stderr and "Traceback" not in result.stderr, result.stderr


@pytest.mark.parametrize(("args", "env", "message"), [
    (["--tls-cert", "c.pem"], {}, "--tls-cert needs --tls-key as well"),
    ([], {"TENSORGATE_TLS_KEY": "k.pem"}, "--tls-key needs --tls-cert as well"),
    (["--tls-client-ca", "ca.pem"], {}, "--tls-client-ca needs --tls-cert and --tls-key"),
], ids=["cert alone", "key alone (env)", "client CA alone"])
def test_incomplete_settings_are_refused(empty_repo: Path, args: list[str], env: dict[str, str],
                                         message: str) -> None:
    result = serve_once(empty_repo, *args, env=env)
    assert result.returncode == 2, result
    assert message in result.stderr, result.stderr


def test_an_expired_certificate_is_served_with_a_warning(ca: Authority, empty_repo: Path) -> None:
    expired = ca.issue("expired", expired=True)
    server = ServerProcess(empty_repo, ["--tls-cert", str(expired.cert), "--tls-key", str(expired.key)])
    server.start()
    try:
        refused = subprocess.run(["curl", "-sS", "--cacert", str(ca.cert),
                                  f"https://127.0.0.1:{server.http_port}/v2/health/live"],
                                 capture_output=True, text=True, timeout=60, check=False)
        assert refused.returncode == 60 and "expired" in refused.stderr, refused  # clients see why
        # The server runs: a client that does not check expiry (or a probe) is answered.
        assert httpx.get(f"https://127.0.0.1:{server.http_port}/v2/health/live", verify=False).status_code == 200
    finally:
        assert server.stop() == 0
    not_after = x509.load_pem_x509_certificate(expired.pem()).not_valid_after_utc.isoformat()
    warning = [line for line in server.log().splitlines() if "event=tls_certificate_expired" in line]
    assert len(warning) == 1 and "level=warning" in warning[0] and f"not_after={not_after}" in warning[0], \
        server.log()


# -- rotation ----------------------------------------------------------------------------------------


def _client_context(ca: Authority, pair: Issued) -> ssl.SSLContext:
    """Trusting ``ca`` for the server, presenting ``pair``."""
    context = ssl.create_default_context(cafile=ca.cert)
    context.load_cert_chain(pair.cert, pair.key)
    return context


def _serial(response: httpx.Response) -> int:
    ssl_object = response.extensions["network_stream"].get_extra_info("ssl_object")
    return x509.load_der_x509_certificate(ssl_object.getpeercert(True)).serial_number


def _new_connection_serial(url: str, context: ssl.SSLContext) -> int | None:
    """The serial a new connection is served, or None when the handshake is refused."""
    try:
        with httpx.Client(verify=context) as client:
            return _serial(client.get(url))  # a new client: a new connection
    except httpx.TransportError:
        return None


def _grpc_ready(address: str, ca: Authority, pair: Issued) -> bool:
    """Whether a new gRPC channel, trusting only ``ca`` and presenting ``pair``, is served."""
    credentials = grpc.ssl_channel_credentials(ca.cert.read_bytes(), pair.key.read_bytes(), pair.cert.read_bytes())
    with grpc.secure_channel(address, credentials) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
        except grpc.RpcError:
            return False
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


def _eventually(condition: Callable[[], bool], what: str, server: ServerProcess) -> None:
    deadline = time.monotonic() + ROTATION_TIMEOUT_S
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {ROTATION_TIMEOUT_S} s\n{server.log()}")
        time.sleep(0.2)


def test_rotation_keeps_connections_and_serves_the_new_certificate(tmp_path: Path) -> None:
    """A cert-manager Secret, as the kubelet mounts it, rotated to a certificate and client CA of a
    new authority; then a half-written pair (kept out), then a good one."""
    old_ca, new_ca = Authority.create(tmp_path / "pki", "old-ca"), Authority.create(tmp_path / "pki", "new-ca")
    old_server, old_client = old_ca.issue("server-1"), old_ca.issue("client-1", client=True)
    new_server, new_client = new_ca.issue("server-2"), new_ca.issue("client-2", client=True)
    third = new_ca.issue("server-3")
    volume = SecretVolume(tmp_path / "secret")
    volume.write(old_server.pem(), old_server.key.read_bytes(), old_ca.cert.read_bytes())
    repo = tmp_path / "repo"
    repo.mkdir()
    model_factory.flat_identity_model(repo)
    server = ServerProcess(repo, ["--tls-cert", str(volume.cert), "--tls-key", str(volume.key),
                                  "--tls-client-ca", str(volume.ca)])
    server.start()
    rest = f"https://127.0.0.1:{server.http_port}/v2/health/ready"
    metrics = f"https://127.0.0.1:{server.metrics_port}/metrics"
    old, new = _client_context(old_ca, old_client), _client_context(new_ca, new_client)
    try:
        with httpx.Client(verify=old, timeout=30) as kept:
            before = kept.get(rest)
            port = before.extensions["network_stream"].get_extra_info("client_addr")[1]
            assert _serial(before) == old_server.serial
            assert _grpc_ready(server.grpc_address, old_ca, old_client)

            volume.write(new_server.pem(), new_server.key.read_bytes(), new_ca.cert.read_bytes())
            for url in (rest, metrics):
                def rotated(url: str = url) -> bool:
                    return _new_connection_serial(url, new) == new_server.serial
                _eventually(rotated, f"{url} serving the new certificate", server)
            _eventually(lambda: _grpc_ready(server.grpc_address, new_ca, new_client), "gRPC rotated", server)
            # Every process has reloaded: the old client CA is no longer trusted, anywhere.
            _eventually(lambda: server.log().count("event=tls_reloaded") == RELOADING, "every process reloaded",
                        server)
            stale = _client_context(new_ca, old_client)
            assert _new_connection_serial(rest, stale) is None
            assert _new_connection_serial(metrics, stale) is None
            assert not _grpc_ready(server.grpc_address, new_ca, old_client)

            after = kept.get(rest)  # the connection opened before the rotation is still up
            assert after.json() == {"ready": True}
            assert after.extensions["network_stream"].get_extra_info("client_addr")[1] == port
            assert _serial(after) == old_server.serial

        # A half-written update (the new certificate, the previous key): refused, the old pair stays.
        volume.write(third.pem(), new_server.key.read_bytes(), new_ca.cert.read_bytes())
        _eventually(lambda: server.log().count("event=tls_reload_failed") == RELOADING, "every process refused it",
                    server)
        assert _new_connection_serial(rest, new) == new_server.serial
        assert _grpc_ready(server.grpc_address, new_ca, new_client)
        volume.write(third.pem(), third.key.read_bytes(), new_ca.cert.read_bytes())
        _eventually(lambda: _new_connection_serial(rest, new) == third.serial, "the completed update", server)
        # One frontend answering with the third pair says nothing of the others: wait for every process.
        _eventually(lambda: server.log().count("event=tls_reloaded") == 2 * RELOADING,
                    "every process took the completed update", server)
    finally:
        assert server.stop() == 0
    log = server.log()
    assert "Traceback" not in log, log
    failed = [line for line in log.splitlines() if "event=tls_reload_failed" in line]
    assert len(failed) == RELOADING, failed  # once per process, not at every poll that saw the same files
    assert all("level=warning" in line and f"--tls-key {volume.key}: does not match" in line for line in failed), failed
    reloaded = [line for line in log.splitlines() if "event=tls_reloaded" in line]
    assert len(reloaded) == 2 * RELOADING and all('subject="CN=server-' in line for line in reloaded), reloaded
    for key in (old_server, new_server, third):  # no key material in the log
        body = re.sub(r"-----[A-Z ]+-----|\s", "", key.key.read_text())
        assert body[60:100] not in log  # the private scalar, past the algorithm identifier

"""TLS and mTLS on the REST, gRPC and metrics ports, with real clients and certificates made here.

Two servers: one with TLS, one with mTLS (client certificates required). tritonclient HTTP and
gRPC run in a process of their own (tls_client_checks.py); curl, httpx and Python's ssl run here.
Rotation and bad files: tests/integration/test_tls_files.py.
"""

from __future__ import annotations

import socket
import ssl
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import orjson
import pytest
from cryptography import x509

from benchmarks.server import free_port
from tests import model_factory
from tests.helpers import run_client_script
from tests.server import ServerProcess
from tests.tls_certs import Authority, Issued

pytestmark = pytest.mark.slow

SCRIPT = Path(__file__).with_name("tls_client_checks.py")


@dataclass(frozen=True)
class Pki:
    ca: Authority
    server: Issued
    client: Issued
    foreign: Issued  # a client certificate from another CA


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    folder = tmp_path_factory.mktemp("pki")
    ca = Authority.create(folder, "ca")
    return Pki(ca, ca.issue("server"), ca.issue("client", client=True),
               Authority.create(folder, "other-ca").issue("foreign", client=True))


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = tmp_path_factory.mktemp("tls") / "repo"
    repo.mkdir()
    model_factory.flat_identity_model(repo)
    return repo


def _serve(repo: Path, *args: str) -> Iterator[ServerProcess]:
    process = ServerProcess(repo, list(args))
    process.start()
    yield process
    code = process.stop()
    log = process.log()
    assert code == 0, f"server exited with {code}:\n{log}"
    assert "Traceback" not in log and "level=error" not in log, log


@pytest.fixture(scope="module")
def tls_server(repo: Path, pki: Pki) -> Iterator[ServerProcess]:
    yield from _serve(repo, "--tls-cert", str(pki.server.cert), "--tls-key", str(pki.server.key))


@pytest.fixture(scope="module")
def health_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def mtls_server(repo: Path, pki: Pki, health_port: int) -> Iterator[ServerProcess]:
    yield from _serve(repo, "--tls-cert", str(pki.server.cert), "--tls-key", str(pki.server.key),
                      "--tls-client-ca", str(pki.ca.cert), "--health-port", str(health_port))


def client_context(pki: Pki, pair: Issued | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=pki.ca.cert)
    if pair is not None:
        context.load_cert_chain(pair.cert, pair.key)
    return context


def https(server: ServerProcess, path: str, port: int | None = None) -> str:
    return f"https://127.0.0.1:{port or server.http_port}{path}"


def served_serial(response: httpx.Response) -> int:
    """The serial of the certificate the server presented on this response's (still open) connection."""
    ssl_object = response.extensions["network_stream"].get_extra_info("ssl_object")
    return x509.load_der_x509_certificate(ssl_object.getpeercert(True)).serial_number


def curl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["curl", "-sS", "--max-time", "30", "-w", "\n%{http_code}", *args],
                          capture_output=True, text=True, timeout=60, check=False)


def binary_infer(values: np.ndarray) -> tuple[bytes, dict[str, str]]:
    """A binary-extension request for flat_identity (the REST fast path)."""
    head = orjson.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [values.size],
                                     "parameters": {"binary_data_size": values.nbytes}}],
                         "outputs": [{"name": "y", "parameters": {"binary_data": True}}]})
    return head + values.tobytes(), {"Inference-Header-Content-Length": str(len(head)),
                                     "Content-Type": "application/octet-stream"}


# -- TLS ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tls_outcome(tls_server: ServerProcess, pki: Pki) -> dict[str, str]:
    options = {"http": f"127.0.0.1:{tls_server.http_port}", "grpc": tls_server.grpc_address,
               "ca": str(pki.ca.cert), "client": None, "foreign": None}
    result: dict[str, str] = run_client_script(SCRIPT, orjson.dumps(options).decode(), timeout=180)
    return result


@pytest.mark.parametrize("name", ["http_round_trips", "grpc_round_trips"])
def test_tritonclient_over_tls(tls_outcome: dict[str, str], name: str) -> None:
    assert sorted(tls_outcome) == ["grpc_round_trips", "http_round_trips"]
    assert tls_outcome[name] == "ok", tls_outcome[name]


def test_curl_verifies_the_server_with_the_ca(tls_server: ServerProcess, pki: Pki) -> None:
    ready = curl("--cacert", str(pki.ca.cert), https(tls_server, "/v2/health/ready"))
    assert ready.returncode == 0, ready.stderr
    assert ready.stdout.splitlines() == ['{"ready":true}', "200"]
    infer = curl("--cacert", str(pki.ca.cert), "-H", "content-type: application/json", "-d",
                 '{"inputs": [{"name": "x", "datatype": "FP32", "shape": [3], "data": [1, 2, 3]}]}',
                 https(tls_server, "/v2/models/flat_identity/infer"))
    assert infer.returncode == 0, infer.stderr
    assert orjson.loads(infer.stdout.splitlines()[0])["outputs"][0]["data"] == [1, 2, 3]


def test_curl_without_the_ca_rejects_the_certificate(tls_server: ServerProcess) -> None:
    result = curl(https(tls_server, "/v2/health/ready"))
    assert result.returncode == 60, result  # CURLE_PEER_FAILED_VERIFICATION: an unknown issuer


def test_keep_alive_large_bodies_and_the_binary_fast_path(tls_server: ServerProcess, pki: Pki) -> None:
    values = np.arange(8 * 1024 * 1024, dtype=np.float32)  # 32 MiB: thousands of TLS records each way
    body, headers = binary_infer(values)
    with httpx.Client(verify=client_context(pki), timeout=120) as client:
        ports = set()
        for _ in range(3):
            response = client.post(https(tls_server, "/v2/models/flat_identity/infer"), content=body, headers=headers)
            assert response.status_code == 200, response.text
            length = int(response.headers["inference-header-content-length"])
            assert np.array_equal(np.frombuffer(response.content[length:], dtype=np.float32), values)
            metadata = client.get(https(tls_server, "/v2/models/flat_identity"))
            assert metadata.json()["name"] == "flat_identity"
            stream = response.extensions["network_stream"]
            ports.add(stream.get_extra_info("client_addr")[1])
            assert stream.get_extra_info("ssl_object").version() in ("TLSv1.2", "TLSv1.3")
        assert len(ports) == 1, "every request went over the one kept-alive TLS connection"


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_a_body_over_the_limit_gets_413_over_tls(tls_server: ServerProcess, pki: Pki, framing: str) -> None:
    """The answer arrives although the body was still coming when the server refused it."""
    limit = 128 * 1024 * 1024
    head = (b"POST /v2/models/flat_identity/infer HTTP/1.1\r\nhost: x\r\n"
            + (b"content-length: %d\r\n\r\n" % (limit + 1) if framing == "content-length"
               else b"transfer-encoding: chunked\r\n\r\n"))
    chunk = b"x" * (1024 * 1024)
    answer = b""
    with client_context(pki).wrap_socket(socket.create_connection(("127.0.0.1", tls_server.http_port), timeout=60),
                                         server_hostname="127.0.0.1") as sock:
        sock.sendall(head)
        # Declared: refused at the head, then 8 MiB more arrive. Chunked: refused once past the limit.
        for _ in range(8 if framing == "content-length" else limit // len(chunk) + 1):
            sock.sendall(chunk if framing == "content-length" else b"%x\r\n%s\r\n" % (len(chunk), chunk))
        while data := sock.recv(65536):
            answer += data
    assert answer.startswith(b"HTTP/1.1 413 "), answer[:200]
    assert b"connection: close" in answer


def test_tls_1_2_clients_are_served(tls_server: ServerProcess, pki: Pki) -> None:
    context = client_context(pki)
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    with httpx.Client(verify=context) as client:
        response = client.get(https(tls_server, "/v2/health/live"))
        assert response.status_code == 200
        assert response.extensions["network_stream"].get_extra_info("ssl_object").version() == "TLSv1.2"


def test_tls_1_2_without_forward_secrecy_or_aead_is_refused(tls_server: ServerProcess, pki: Pki) -> None:
    for port in (tls_server.http_port, tls_server.metrics_port):
        for cipher in ("ECDHE-ECDSA-AES128-SHA256", "ECDHE-ECDSA-AES256-SHA384"):  # CBC: not served
            context = client_context(pki)
            context.maximum_version = ssl.TLSVersion.TLSv1_2
            context.set_ciphers(cipher)
            with socket.create_connection(("127.0.0.1", port), timeout=30) as sock, pytest.raises(ssl.SSLError):
                context.wrap_socket(sock, server_hostname="127.0.0.1")
        context = client_context(pki)
        context.maximum_version = ssl.TLSVersion.TLSv1_2
        context.set_ciphers("ECDHE-ECDSA-AES128-GCM-SHA256")
        with socket.create_connection(("127.0.0.1", port), timeout=30) as sock, \
                context.wrap_socket(sock, server_hostname="127.0.0.1") as tls:
            negotiated = tls.cipher()
            assert negotiated is not None and negotiated[0] == "ECDHE-ECDSA-AES128-GCM-SHA256"


def test_redirects_name_https(tls_server: ServerProcess, pki: Pki) -> None:
    """The ASGI scope says https, so the app's own URLs do too."""
    with httpx.Client(verify=client_context(pki)) as client:
        response = client.get(https(tls_server, "/v2/health/live/"))
    assert response.status_code == 307, response.text
    assert response.headers["location"] == https(tls_server, "/v2/health/live")


def test_plain_http_on_the_tls_port_is_closed_and_harms_nothing(tls_server: ServerProcess, pki: Pki) -> None:
    for payload in (b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n", b"\x00" * 600, b"PRI * HTTP/2.0\r\n\r\n"):
        for _ in range(6):  # the kernel spreads connections over both frontends
            with socket.create_connection(("127.0.0.1", tls_server.http_port), timeout=30) as sock:
                sock.sendall(payload)
                answer = sock.recv(1024)
            assert not answer.startswith(b"HTTP"), answer
    with pytest.raises(httpx.RemoteProtocolError):  # closed without an answer
        httpx.get(f"http://127.0.0.1:{tls_server.http_port}/v2/health/live")
    with httpx.Client(verify=client_context(pki)) as client:
        for _ in range(6):
            assert client.get(https(tls_server, "/v2/health/ready"), headers={"connection": "close"}).status_code == 200


def test_metrics_over_tls(tls_server: ServerProcess, pki: Pki) -> None:
    with httpx.Client(verify=client_context(pki)) as client:
        response = client.get(https(tls_server, "/metrics", tls_server.metrics_port))
        assert response.status_code == 200
        assert "tensorgate_requests_total" in response.text
        assert served_serial(response) == pki.server.serial
    with pytest.raises(httpx.RemoteProtocolError):
        httpx.get(tls_server.metrics_url)


# -- mTLS --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mtls_outcome(mtls_server: ServerProcess, pki: Pki) -> dict[str, str]:
    options = {"http": f"127.0.0.1:{mtls_server.http_port}", "grpc": mtls_server.grpc_address,
               "ca": str(pki.ca.cert), "client": [str(pki.client.cert), str(pki.client.key)],
               "foreign": [str(pki.foreign.cert), str(pki.foreign.key)]}
    result: dict[str, str] = run_client_script(SCRIPT, orjson.dumps(options).decode(), timeout=180)
    return result


MTLS_CHECKS = ["http_round_trips", "grpc_round_trips", "http_without_certificate_refused",
               "grpc_without_certificate_refused", "http_foreign_certificate_refused",
               "grpc_foreign_certificate_refused"]


@pytest.mark.parametrize("name", MTLS_CHECKS)
def test_tritonclient_over_mtls(mtls_outcome: dict[str, str], name: str) -> None:
    assert sorted(mtls_outcome) == sorted(MTLS_CHECKS)
    assert mtls_outcome[name] == "ok", mtls_outcome[name]


def test_curl_with_a_client_certificate(mtls_server: ServerProcess, pki: Pki) -> None:
    ok = curl("--cacert", str(pki.ca.cert), "--cert", str(pki.client.cert), "--key", str(pki.client.key),
              https(mtls_server, "/v2/health/ready"))
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.splitlines() == ['{"ready":true}', "200"]


@pytest.mark.parametrize("who", ["none", "foreign"])
def test_curl_without_a_trusted_certificate_gets_no_answer(mtls_server: ServerProcess, pki: Pki, who: str) -> None:
    pair = ["--cert", str(pki.foreign.cert), "--key", str(pki.foreign.key)] if who == "foreign" else []
    result = curl("--cacert", str(pki.ca.cert), *pair, https(mtls_server, "/v2/health/ready"))
    assert result.returncode != 0
    assert result.stdout.strip() == "000", result  # no HTTP status at all


@pytest.mark.parametrize("who", ["trusted", "none", "foreign"])
def test_refused_in_the_handshake(mtls_server: ServerProcess, pki: Pki, who: str) -> None:
    """Under TLS 1.2 the server's verdict on the client certificate ends the handshake itself
    (under 1.3 the client hears it on its first read: see the curl and tritonclient checks)."""
    context = client_context(pki, {"trusted": pki.client, "none": None, "foreign": pki.foreign}[who])
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    for port in (mtls_server.http_port, mtls_server.metrics_port):
        with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
            if who == "trusted":
                context.wrap_socket(sock, server_hostname="127.0.0.1").close()
                continue
            with pytest.raises((ssl.SSLError, ConnectionResetError)):
                context.wrap_socket(sock, server_hostname="127.0.0.1")


def test_httpx_and_metrics_with_a_client_certificate(mtls_server: ServerProcess, pki: Pki) -> None:
    with httpx.Client(verify=client_context(pki, pki.client)) as client:
        assert client.get(https(mtls_server, "/v2/health/ready")).json() == {"ready": True}
        metrics = client.get(https(mtls_server, "/metrics", mtls_server.metrics_port))
        assert metrics.status_code == 200 and "tensorgate_requests_total" in metrics.text
    for port in (mtls_server.http_port, mtls_server.metrics_port):
        with pytest.raises(httpx.TransportError):
            httpx.get(https(mtls_server, "/v2/health/ready", port), verify=client_context(pki))


def test_the_health_port_answers_probes_in_clear_text(mtls_server: ServerProcess, health_port: int) -> None:
    """What a kubelet probe, which has no client certificate, can reach under mTLS: health and nothing else."""
    base = f"http://127.0.0.1:{health_port}"
    with httpx.Client() as client:  # one kept-alive connection, as the probes of one pod
        assert client.get(f"{base}/v2/health/live").json() == {"live": True}
        ready = client.get(f"{base}/v2/health/ready")
        assert (ready.status_code, ready.json()) == (200, {"ready": True})
        for path in ("/v2", "/v2/models/flat_identity", "/metrics", "/v2/models/flat_identity/ready"):
            response = client.get(f"{base}{path}")
            assert response.status_code == 404 and "health port" in response.json()["error"], path
        infer = client.post(f"{base}/v2/models/flat_identity/infer", json={"inputs": []})
        assert infer.status_code == 404 and "infer on the REST port" in infer.json()["error"]
        assert client.post(f"{base}/v2/health/ready").status_code == 405

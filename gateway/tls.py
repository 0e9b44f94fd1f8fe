"""TLS for the REST, gRPC and metrics ports: the files checked, the server contexts built, rotation followed.

``--tls-cert``/``--tls-key`` (and ``--tls-client-ca`` for mTLS) are read by ``load``, which refuses,
naming the file, anything a listener could not serve with: a missing, unreadable or empty file, a
file that is not PEM, a key that is not the certificate's. The supervisor calls it before any child
starts, so a bad file stops the server at once instead of crash-looping frontends.

Rotation (a Kubernetes Secret swaps its ``..data`` symlink; cert-manager renews): every process that
listens runs a ``TlsWatcher``, which reads the files every ``POLL_S`` seconds and, when their content
changed, loads them and hands the new material to its listeners. New handshakes then use it; an
established connection keeps the session it has. A pair that does not load (files caught half
written) is logged once and changes nothing; the next change is tried again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import ssl
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization

from gateway.logs import log_event
from gateway.settings import Settings

__all__ = ["POLL_S", "FrontendTls", "ReloadingContext", "ReloadingGrpcCredentials", "TlsError", "TlsFiles",
           "TlsMaterial", "TlsWatcher", "load", "log_loaded", "server_context"]

log = logging.getLogger("tensorgate.tls")

#: Seconds between two reads of the certificate files.
POLL_S = 2.0
_SPKI = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
#: TLS 1.2 suites: forward secrecy and AEAD only (Mozilla's "intermediate" list); TLS 1.3's are all AEAD.
TLS12_CIPHERS = "@SECLEVEL=2:ECDHE+AESGCM:ECDHE+CHACHA20:DHE+AESGCM:DHE+CHACHA20:!aNULL"


class TlsError(Exception):
    """A certificate, key or CA file that cannot be served with; the message names the file."""


@dataclass(frozen=True)
class TlsFiles:
    """Where the PEM files are, as the settings give them: symlinks are followed at every read."""

    cert: Path
    key: Path
    client_ca: Path | None

    @classmethod
    def from_settings(cls, settings: Settings) -> TlsFiles | None:
        """The files when TLS is on (the settings check that cert and key come together)."""
        if settings.tls_cert is None or settings.tls_key is None:
            return None
        return cls(settings.tls_cert, settings.tls_key, settings.tls_client_ca)

    def read(self) -> tuple[bytes, bytes, bytes | None]:
        """The three files' bytes (the client CA's None when mTLS is off)."""
        return (_read(self.cert, "--tls-cert"), _read(self.key, "--tls-key"),
                None if self.client_ca is None else _read(self.client_ca, "--tls-client-ca"))


@dataclass(frozen=True)
class TlsMaterial:
    """One loaded certificate, its key and the client CA, with what the logs say about the certificate."""

    cert_pem: bytes
    key_pem: bytes
    client_ca_pem: bytes | None
    subject: str
    serial: str
    not_after: datetime
    fingerprint: str

    def expired(self, now: datetime | None = None) -> bool:
        return self.not_after <= (now or datetime.now(UTC))


def _read(path: Path, flag: str) -> bytes:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise TlsError(f"{flag} {path}: no such file") from None
    except IsADirectoryError:
        raise TlsError(f"{flag} {path}: is a directory, not a file") from None
    except OSError as exc:
        raise TlsError(f"{flag} {path}: cannot be read ({exc.strerror or exc})") from None
    if not data.strip():
        raise TlsError(f"{flag} {path}: the file is empty")
    return data


def load(files: TlsFiles, contents: tuple[bytes, bytes, bytes | None] | None = None) -> TlsMaterial:
    """Check the files (or ``contents``, read from them) and return what a listener serves with."""
    cert_pem, key_pem, ca_pem = files.read() if contents is None else contents
    try:
        chain = x509.load_pem_x509_certificates(cert_pem)
    except ValueError:
        raise TlsError(f"--tls-cert {files.cert}: not a PEM certificate (expected -----BEGIN CERTIFICATE-----)") \
            from None
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except TypeError:
        raise TlsError(f"--tls-key {files.key}: the key is encrypted; give an unencrypted PEM key") from None
    except (ValueError, UnsupportedAlgorithm):
        raise TlsError(f"--tls-key {files.key}: not a PEM private key (expected -----BEGIN ... PRIVATE KEY-----)") \
            from None
    leaf = chain[0]
    if key.public_key().public_bytes(*_SPKI) != leaf.public_key().public_bytes(*_SPKI):
        raise TlsError(f"--tls-key {files.key}: does not match the certificate in --tls-cert {files.cert} "
                       f"({leaf.subject.rfc4514_string()})")
    if ca_pem is not None:
        try:
            x509.load_pem_x509_certificates(ca_pem)
        except ValueError:
            raise TlsError(f"--tls-client-ca {files.client_ca}: not PEM CA certificates "
                           "(expected -----BEGIN CERTIFICATE-----)") from None
    material = TlsMaterial(cert_pem, key_pem, ca_pem, leaf.subject.rfc4514_string(), f"{leaf.serial_number:x}",
                           leaf.not_valid_after_utc, leaf.fingerprint(hashes.SHA256()).hex())
    try:
        server_context(material)  # what OpenSSL itself refuses (e.g. a key type it does not serve)
    except ssl.SSLError as exc:
        raise TlsError(f"--tls-cert {files.cert} / --tls-key {files.key}: OpenSSL refuses them ({exc.reason})") \
            from None
    return material


def log_loaded(material: TlsMaterial, event: str) -> None:
    """Log what is served now (never key material); an expired certificate as a warning with its date.

    An expired certificate still starts the server: its health and metrics stay reachable, clients
    get a verification error that says why, and the renewed files are picked up without a restart.
    """
    expired = material.expired()
    log_event(log, "tls_certificate_expired" if expired else event, level=logging.WARNING if expired else logging.INFO,
              subject=material.subject, serial=material.serial, not_after=material.not_after.isoformat(),
              sha256=material.fingerprint, mtls=material.client_ca_pem is not None)


@contextlib.contextmanager
def _memory_file(data: bytes) -> Iterator[str]:
    """A path OpenSSL can read ``data`` from, in memory only (no copy of a key on disk)."""
    fd = os.memfd_create("tensorgate-tls", os.MFD_CLOEXEC)
    try:
        os.write(fd, data)
        yield f"/proc/self/fd/{fd}"
    finally:
        os.close(fd)


def server_context(material: TlsMaterial, alpn: tuple[str, ...] = ("http/1.1",)) -> ssl.SSLContext:
    """A server context: TLS 1.2 or newer, forward-secret AEAD suites, no renegotiation or
    compression; client certificates required and verified against the client CA when there is one
    (and then only it: no system CAs)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(TLS12_CIPHERS)
    context.options |= ssl.OP_NO_RENEGOTIATION
    with _memory_file(material.cert_pem) as cert, _memory_file(material.key_pem) as key:
        context.load_cert_chain(cert, key)
    if material.client_ca_pem is not None:
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(cadata=material.client_ca_pem.decode("ascii", "replace"))
    context.set_alpn_protocols(list(alpn))
    return context


class ReloadingContext:
    """The SSLContext a listener is created with; each new handshake is moved to the newest one.

    OpenSSL lets the server-name callback (run for every ClientHello, with or without SNI) switch
    the connection to another context: its certificate, key and client-CA store then apply, so a
    rotated CA is honoured too, not merely added. Established connections are not touched.
    """

    def __init__(self, material: TlsMaterial, alpn: tuple[str, ...] = ("http/1.1",)) -> None:
        self._alpn = alpn
        self.context = server_context(material, alpn)
        self._current = self.context
        self.context.sni_callback = self._select

    def update(self, material: TlsMaterial) -> None:
        self._current = server_context(material, self._alpn)

    def _select(self, connection: ssl.SSLObject, server_name: str | None, context: ssl.SSLContext) -> None:
        current = self._current
        if current is not context:
            connection.context = current


class ReloadingGrpcCredentials:
    """gRPC server credentials whose certificate gRPC asks for at every new handshake.

    gRPC calls the fetcher from its own threads: it hands over the newest configuration once
    (None means "keep the one you have"), so only a rotation costs anything.
    """

    def __init__(self, material: TlsMaterial) -> None:
        self._pending: grpc.ServerCertificateConfiguration | None = None
        self.credentials = grpc.dynamic_ssl_server_credentials(
            _grpc_configuration(material), self._fetch,
            require_client_authentication=material.client_ca_pem is not None)

    def update(self, material: TlsMaterial) -> None:
        self._pending = _grpc_configuration(material)

    def _fetch(self) -> grpc.ServerCertificateConfiguration | None:
        pending, self._pending = self._pending, None
        return pending


def _grpc_configuration(material: TlsMaterial) -> grpc.ServerCertificateConfiguration:
    return grpc.ssl_server_certificate_configuration([(material.key_pem, material.cert_pem)],
                                                      root_certificates=material.client_ca_pem)


class TlsWatcher:
    """Follows the files of one process's listeners: reads them every ``POLL_S`` and reloads on change."""

    def __init__(self, files: TlsFiles, material: TlsMaterial,
                 listeners: list[Callable[[TlsMaterial], None]]) -> None:
        self._files = files
        self._listeners = listeners
        self._seen: tuple[bytes, bytes, bytes | None] = (material.cert_pem, material.key_pem, material.client_ca_pem)
        self._problem: str | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(POLL_S)
            self.check()

    def check(self) -> None:
        """Reload if the files changed since they were last tried."""
        try:
            contents = self._files.read()
            if contents == self._seen:
                return
            self._seen = contents
            material = load(self._files, contents)
        except TlsError as exc:
            if str(exc) != self._problem:  # once per problem, not every poll
                self._problem = str(exc)
                log_event(log, "tls_reload_failed", level=logging.WARNING, reason=self._problem,
                          action="still serving the previous certificate; tried again when the files change")
            return
        self._problem = None
        for listener in self._listeners:
            listener(material)
        log_loaded(material, "tls_reloaded")


class FrontendTls:
    """A frontend's TLS: the REST context and the gRPC port's (grpc.aio credentials, or the native
    server's context offering h2), reloaded together by one watcher."""

    def __init__(self, files: TlsFiles, grpc_server: str) -> None:
        material = load(files)
        self.rest = ReloadingContext(material)
        self.grpc: ReloadingGrpcCredentials | ReloadingContext = (
            ReloadingContext(material, ("h2",)) if grpc_server == "native" else ReloadingGrpcCredentials(material))
        self.watcher = TlsWatcher(files, material, [self.rest.update, self.grpc.update])

"""Certificates made on the fly for the TLS tests: CAs, server and client certificates, PEM files.

Server certificates name ``127.0.0.1`` and ``localhost`` (the tests' loopback address); every
certificate gets a fresh random serial, so a test can tell which one a server presented.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

_DAY = datetime.timedelta(days=1)


@dataclass(frozen=True)
class Issued:
    """A certificate and its key, as PEM files."""

    cert: Path
    key: Path
    serial: int

    def pem(self) -> bytes:
        return self.cert.read_bytes()


@dataclass(frozen=True)
class Authority:
    """A self-signed CA that signs server and client certificates into ``folder``."""

    name: str
    folder: Path
    cert_obj: x509.Certificate
    key_obj: ec.EllipticCurvePrivateKey

    @property
    def cert(self) -> Path:
        return self.folder / f"{self.name}.crt"

    @classmethod
    def create(cls, folder: Path, name: str) -> Authority:
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = datetime.datetime.now(datetime.UTC)
        cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
                .serial_number(x509.random_serial_number()).not_valid_before(now - _DAY)
                .not_valid_after(now + 30 * _DAY)
                .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                             content_commitment=False, key_encipherment=False,
                                             data_encipherment=False, key_agreement=False, encipher_only=False,
                                             decipher_only=False), critical=True)
                .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
                .sign(key, hashes.SHA256()))
        folder.mkdir(parents=True, exist_ok=True)
        authority = cls(name, folder, cert, key)
        authority.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return authority

    def issue(self, name: str, *, client: bool = False, expired: bool = False) -> Issued:
        """A server certificate for 127.0.0.1/localhost, or with ``client`` a client certificate."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        start, end = (now - 10 * _DAY, now - _DAY) if expired else (now - _DAY, now + 7 * _DAY)
        serial = x509.random_serial_number()
        builder = (x509.CertificateBuilder()
                   .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
                   .issuer_name(self.cert_obj.subject).public_key(key.public_key()).serial_number(serial)
                   .not_valid_before(start).not_valid_after(end)
                   .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                   .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key_obj.public_key()),
                                  critical=False)
                   .add_extension(x509.ExtendedKeyUsage(
                       [ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH]),
                       critical=False))
        if not client:
            builder = builder.add_extension(x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False)
        cert = builder.sign(self.key_obj, hashes.SHA256())
        issued = Issued(self.folder / f"{name}.crt", self.folder / f"{name}.key", serial)
        issued.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        issued.key.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                 serialization.NoEncryption()))
        return issued


class SecretVolume:
    """A folder laid out as the kubelet mounts a Secret: ``tls.crt -> ..data/tls.crt``, ``..data`` a
    symlink to a timestamped folder, swapped atomically on every update."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self._version = 0

    @property
    def cert(self) -> Path:
        return self.folder / "tls.crt"

    @property
    def key(self) -> Path:
        return self.folder / "tls.key"

    @property
    def ca(self) -> Path:
        return self.folder / "ca.crt"

    def write(self, cert: bytes, key: bytes, ca: bytes) -> None:
        self._version += 1
        data = self.folder / f"..2026_{self._version}"
        data.mkdir()
        for name, content in (("tls.crt", cert), ("tls.key", key), ("ca.crt", ca)):
            (data / name).write_bytes(content)
            link = self.folder / name
            if not link.is_symlink():
                link.symlink_to(f"..data/{name}")
        staging = self.folder / "..data_tmp"
        staging.symlink_to(data.name)
        os.replace(staging, self.folder / "..data")

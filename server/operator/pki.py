"""The federation's certificates: one CA and one TLS certificate for the SuperLink and the
enrollment service, both EC P-384, made with ``cryptography``.

The CA signs the server certificate; nodes trust only this CA (pinned by the SHA-256 of its
DER encoding, which every invitation token carries). Private keys are written 0600.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from common.files import write_private

CA_CERT = "ca.pem"
CA_KEY = "ca.key"
SERVER_CERT = "server.pem"  # leaf + CA: the enrollment service presents the whole chain
SERVER_KEY = "server.key"
LOOPBACK_HOSTS = ("localhost", "127.0.0.1")
CA_VALID_DAYS = 3650
SERVER_VALID_DAYS = 825


@dataclass(frozen=True)
class ServerPki:
    """Where the federation's PKI files live inside the federation directory."""

    root: Path

    @property
    def ca_cert(self) -> Path:
        return self.root / CA_CERT

    @property
    def ca_key(self) -> Path:
        return self.root / CA_KEY

    @property
    def server_cert(self) -> Path:
        return self.root / SERVER_CERT

    @property
    def server_key(self) -> Path:
        return self.root / SERVER_KEY

    def files(self) -> tuple[Path, ...]:
        return (self.ca_cert, self.ca_key, self.server_cert, self.server_key)


def ca_pin(ca_pem: bytes) -> str:
    """``sha256:<hex>`` of the CA certificate's DER encoding (what invitations carry)."""
    cert = x509.load_pem_x509_certificate(ca_pem)
    return "sha256:" + hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fedlora federation"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _san(hosts: list[str]) -> x509.SubjectAlternativeName:
    names: list[x509.GeneralName] = []
    for host in dict.fromkeys([*hosts, *LOOPBACK_HOSTS]):  # ordered, unique
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return x509.SubjectAlternativeName(names)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _make_ca(now: dt.datetime) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP384R1())
    name = _name("fedlora federation CA")
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=CA_VALID_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA384())
    )
    return key, cert


def _make_server(
    ca_key: ec.EllipticCurvePrivateKey, ca: x509.Certificate, hosts: list[str], now: dt.datetime
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP384R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(hosts[0]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=SERVER_VALID_DAYS))
        .add_extension(_san(hosts), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA384())
    )
    return key, cert


def create_pki(root: Path, hosts: list[str]) -> ServerPki:
    """Write a fresh CA and a server certificate for ``hosts`` (+ loopback) into ``root``.

    Refuses to overwrite: an existing CA means enrolled nodes trust it.
    """
    pki = ServerPki(root)
    existing = [str(f) for f in pki.files() if f.exists()]
    if existing:
        raise FileExistsError(
            f"{existing[0]} exists: this folder already holds a federation; use another "
            "`--dir`, or remove the folder to start over (enrolled nodes must then rejoin)"
        )
    root.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)
    ca_key, ca = _make_ca(now)
    key, cert = _make_server(ca_key, ca, hosts, now)
    ca_pem = ca.public_bytes(serialization.Encoding.PEM)
    write_private(pki.ca_key, _key_pem(ca_key))
    write_private(pki.server_key, _key_pem(key))
    pki.ca_cert.write_bytes(ca_pem)
    pki.server_cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM) + ca_pem)
    return pki

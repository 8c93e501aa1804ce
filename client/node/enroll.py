"""The node's side of enrollment: find the pinned CA, then enroll over TLS verified by it.

Like ``kubeadm join``: the node does not have the federation's CA yet, only its SHA-256 pin
from the token. It reads the certificate chain the enrollment service presents (public data),
keeps the certificate whose hash equals the pin, and then makes the real call on a channel
whose only trusted root is that CA, so a server whose certificate does not chain to the pinned
CA (or does not name the host) is refused by TLS itself.
"""

from __future__ import annotations

import _ssl
import hashlib
import socket
import ssl
from dataclasses import dataclass

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from protos.fedlora.enroll.v1 import enroll_pb2, enroll_pb2_grpc
from protos.tokens import Token

TIMEOUT_S = 15.0


class JoinError(RuntimeError):
    """Enrollment failed; the message is the one line the node admin sees."""


@dataclass(frozen=True)
class Enrollment:
    node_name: str
    node_id: int
    ca_pem: bytes
    superlink_address: str


def split_address(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


def presented_chain(address: str, *, timeout_s: float = TIMEOUT_S) -> list[bytes]:
    """DER certificates the server at ``address`` presents (unverified: checked by pin next)."""
    host, port = split_address(address)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.set_alpn_protocols(["h2"])
    try:
        with (
            socket.create_connection((host, port), timeout=timeout_s) as raw,
            context.wrap_socket(raw, server_hostname=host) as tls,
        ):
            chain = getattr(tls, "get_unverified_chain", None)  # public from Python 3.13
            certs = chain() if chain else tls._sslobj.get_unverified_chain()  # type: ignore[attr-defined]
    except (OSError, ssl.SSLError) as err:
        raise JoinError(
            f"cannot reach the enrollment service at {address} ({err}): check the address in "
            "the token, that `fedlora server start` is running, and that the port is open"
        ) from None
    return [c if isinstance(c, bytes) else c.public_bytes(_ssl.ENCODING_DER) for c in certs or []]


def pinned_ca(address: str, ca_pin: str) -> bytes:
    """The PEM of the presented certificate whose SHA-256 equals ``ca_pin``; else refuse."""
    for der in presented_chain(address):
        if "sha256:" + hashlib.sha256(der).hexdigest() == ca_pin:
            cert = x509.load_der_x509_certificate(der)
            return cert.public_bytes(serialization.Encoding.PEM)
    raise JoinError(
        f"CA pin mismatch: the server at {address} does not present the CA the token pins "
        f"({ca_pin[:19]}…); do not join, and check with the operator that the token and "
        "address are right"
    )


def enroll(token: Token, *, public_key: str, insecure: bool = False) -> Enrollment:
    """Present ``token`` and ``public_key`` to the enrollment service; return what it sends."""
    if insecure:
        channel = grpc.insecure_channel(token.address)
    else:
        ca_pem = pinned_ca(token.address, token.ca_pin)
        channel = grpc.secure_channel(token.address, grpc.ssl_channel_credentials(ca_pem))
    request = enroll_pb2.EnrollRequest(
        token_id=token.token_id, token_secret=token.secret, public_key=public_key
    )
    try:
        with channel:
            stub = enroll_pb2_grpc.EnrollmentStub(channel)  # type: ignore[no-untyped-call]
            reply = stub.Enroll(request, timeout=TIMEOUT_S)
    except grpc.RpcError as err:
        if err.code() == grpc.StatusCode.UNAVAILABLE and not insecure:
            raise JoinError(
                f"no verified TLS connection to {token.address}: its certificate does not chain "
                "to the pinned CA or does not name this host; do not join, and check the token "
                f"and address with the operator ({err.details()})"
            ) from None
        raise JoinError(f"enrollment refused: {err.details()}") from None
    if not insecure and reply.ca_certificate.strip() != ca_pem.strip():
        raise JoinError("CA pin mismatch: the service returned a CA other than the pinned one")
    return Enrollment(
        reply.node_name, int(reply.node_id), bytes(reply.ca_certificate), reply.superlink_address
    )

"""The enrollment service over real TLS on loopback, in-process (no Flower): the node's pin
check, the verified channel, refusals and rate limiting."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from client.node.enroll import JoinError, enroll
from client.node.folder import NodeDir, generate_key
from protos.fedlora.enroll.v1 import enroll_pb2_grpc
from protos.tokens import Token, new_token
from server.operator.enrollment.registry import Registry
from server.operator.enrollment.service import EnrollmentServicer, RateLimiter
from server.operator.pki import ServerPki, ca_pin, create_pki


class Fleet:
    """Stands in for Flower's RegisterNode: records what it was asked to register."""

    def __init__(self) -> None:
        self.registered: list[tuple[str, str]] = []

    def __call__(self, name: str, key: str) -> int:
        self.registered.append((name, key))
        return 1000 + len(self.registered)


@pytest.fixture
def pki(tmp_path: Path) -> ServerPki:
    return create_pki(tmp_path / "fed", ["127.0.0.1"])


@pytest.fixture
def public_key(tmp_path: Path) -> str:
    (tmp_path / "node").mkdir()
    return generate_key(NodeDir(tmp_path / "node"))


def _serve(pki: ServerPki, registry: Registry, fleet: Fleet, limiter: RateLimiter | None = None,
           chain: bytes | None = None, key: bytes | None = None) -> Iterator[str]:  # fmt: skip
    servicer = EnrollmentServicer(
        registry=registry, register=fleet, ca_pem=pki.ca_cert.read_bytes(),
        superlink_address="127.0.0.1:9092", limiter=limiter,
    )  # fmt: skip
    server = grpc.server(futures.ThreadPoolExecutor(2))
    enroll_pb2_grpc.add_EnrollmentServicer_to_server(servicer, server)
    creds = grpc.ssl_server_credentials([(key or pki.server_key.read_bytes(),
                                          chain or pki.server_cert.read_bytes())])  # fmt: skip
    port = server.add_secure_port("127.0.0.1:0", creds)
    server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.stop(grace=None)


def _invite(registry: Registry, address: str, pin: str, name: str) -> Token:
    token = new_token(address=address, ca_pin=pin)
    registry.add_invitation(token_id=token.token_id, name=name, secret=token.secret, ttl_s=60)
    return token


def test_join_over_tls_with_the_pinned_ca(pki: ServerPki, public_key: str, tmp_path: Path) -> None:
    registry, fleet = Registry(tmp_path / "e.db"), Fleet()
    for address in _serve(pki, registry, fleet):
        token = _invite(registry, address, ca_pin(pki.ca_cert.read_bytes()), "hospital-a")
        with pytest.raises(JoinError, match="not an OpenSSH EC P-384 key"):
            enroll(token, public_key="ssh-rsa garbage")
        enrolled = enroll(token, public_key=public_key)
        assert enrolled.node_name == "hospital-a" and enrolled.node_id == 1001
        assert enrolled.ca_pem == pki.ca_cert.read_bytes()
        assert enrolled.superlink_address == "127.0.0.1:9092"
        # only the public key crossed (its comment is not stored)
        assert fleet.registered == [("hospital-a", " ".join(public_key.split()[:2]))]
        with pytest.raises(JoinError, match="already used"):
            enroll(token, public_key=public_key)


def test_a_server_outside_the_pinned_ca_is_refused(
    pki: ServerPki, public_key: str, tmp_path: Path
) -> None:
    """An impostor presents the real (public) CA certificate in its chain, but its own leaf:
    the pin matches a certificate it shows, and TLS still refuses it."""
    evil = create_pki(tmp_path / "evil", ["127.0.0.1"])
    evil_leaf = x509.load_pem_x509_certificates(evil.server_cert.read_bytes())[0]
    chain = evil_leaf.public_bytes(serialization.Encoding.PEM) + pki.ca_cert.read_bytes()
    registry, fleet = Registry(tmp_path / "e.db"), Fleet()
    serving = _serve(pki, registry, fleet, chain=chain, key=evil.server_key.read_bytes())
    for address in serving:
        token = _invite(registry, address, ca_pin(pki.ca_cert.read_bytes()), "hospital-a")
        with pytest.raises(JoinError, match="does not chain to the pinned CA"):
            enroll(token, public_key=public_key)
        wrong_pin = Token(token.token_id, address, ca_pin(evil.ca_cert.read_bytes()),
                          token.secret)  # fmt: skip
        with pytest.raises(JoinError, match="CA pin mismatch"):
            enroll(wrong_pin, public_key=public_key)
    assert fleet.registered == []


def test_failed_attempts_are_rate_limited(pki: ServerPki, public_key: str, tmp_path: Path) -> None:
    registry, fleet = Registry(tmp_path / "e.db"), Fleet()
    limiter = RateLimiter(max_failures=3, window_s=60.0)
    for address in _serve(pki, registry, fleet, limiter=limiter):
        token = _invite(registry, address, ca_pin(pki.ca_cert.read_bytes()), "bank-b")
        guess = Token(token.token_id, address, token.ca_pin, "wrong-secret")
        for _ in range(3):
            with pytest.raises(JoinError, match="unknown token"):
                enroll(guess, public_key=public_key)
        with pytest.raises(JoinError, match="too many failed attempts"):
            enroll(token, public_key=public_key)  # even the right token, for a while
    assert fleet.registered == []
    outcomes = [e[3] for e in registry.events()]
    assert outcomes.count("refused") == 3 and outcomes.count("blocked") == 1


def test_unreachable_service_is_one_clear_line(public_key: str) -> None:
    token = new_token(address="127.0.0.1:1", ca_pin="sha256:" + "0" * 64)
    with pytest.raises(JoinError, match="cannot reach the enrollment service"):
        enroll(token, public_key=public_key)

"""Invitation tokens, the enrollment registry and the rate limiter: pure pieces, no network."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from hypothesis import given
from hypothesis import strategies as st

from protos.tokens import (
    TokenError,
    new_token,
    parse_token,
    parse_ttl,
    secret_hash,
    secret_matches,
)
from server.operator.enrollment.registry import Refused, Registry
from server.operator.enrollment.service import RateLimiter, key_fingerprint, peer_host
from server.operator.pki import ca_pin, create_pki

PIN = "sha256:" + "ab" * 32
KEY = "ecdsa-sha2-nistp384 AAAAE2VjZHNhLXNoYTItbmlzdHAzODQ= node"  # shape only


@given(st.from_regex(r"[a-z0-9.\-]{1,30}", fullmatch=True), st.integers(1, 65535))
def test_token_round_trips(host: str, port: int) -> None:
    token = new_token(address=f"{host}:{port}", ca_pin=PIN)
    assert parse_token(token.encode()) == token
    assert parse_token("  " + token.encode() + "\n") == token


@pytest.mark.parametrize(
    ("text", "message"),
    [("hello", "not a fedlora invitation"), ("fl1.%%%.secret", "damaged"),
     ("fl1.e30.secret", "damaged"), ("xx1.e30.s", "not a fedlora invitation")],
)  # fmt: skip
def test_bad_tokens_are_named(text: str, message: str) -> None:
    with pytest.raises(TokenError, match=message):
        parse_token(text)


def test_secret_is_stored_hashed_and_compared_exactly() -> None:
    stored = secret_hash("s3cret")
    assert "s3cret" not in stored and len(stored) == 64
    assert secret_matches("s3cret", stored)
    assert not secret_matches("s3cret ", stored)


@pytest.mark.parametrize(("text", "seconds"), [("90s", 90), ("30m", 1800), ("1h", 3600),
                                               ("2d", 172800)])  # fmt: skip
def test_ttl(text: str, seconds: int) -> None:
    assert parse_ttl(text) == seconds


@pytest.mark.parametrize("text", ["0h", "1w", "h", "-1h", "1.5h"])
def test_bad_ttl_names_the_flag(text: str) -> None:
    with pytest.raises(ValueError, match="`--ttl`"):
        parse_ttl(text)


def _registry(tmp_path: Path) -> Registry:
    return Registry(tmp_path / "enrollment.db")


def _enroll(registry: Registry, token_id: str, secret: str, *, node_id: int = 7) -> object:
    return registry.enroll(token_id=token_id, secret=secret, public_key=KEY, fingerprint="fp",
                           peer="ipv4:127.0.0.1", register=lambda name, key: node_id)  # fmt: skip


def test_enroll_consumes_the_token_once(tmp_path: Path) -> None:
    registry = _registry(tmp_path)
    registry.add_invitation(token_id="t1", name="hospital-a", secret="s", ttl_s=60)
    with pytest.raises(Refused, match="unknown token"):
        _enroll(registry, "t1", "wrong")
    with pytest.raises(Refused, match="unknown token"):
        _enroll(registry, "nope", "s")
    record = _enroll(registry, "t1", "s", node_id=2**64 - 1)  # Flower ids are uint64
    assert [n.name for n in registry.nodes()] == ["hospital-a"]
    assert registry.nodes()[0].node_id == 2**64 - 1 == record.node_id  # type: ignore[attr-defined]
    with pytest.raises(Refused, match="already used"):
        _enroll(registry, "t1", "s")
    outcomes = [e[3] for e in registry.events()]
    assert outcomes.count("refused") == 3 and outcomes.count("enrolled") == 1


def test_expired_token_and_taken_name_are_refused(tmp_path: Path) -> None:
    registry = _registry(tmp_path)
    registry.add_invitation(token_id="old", name="bank-b", secret="s", ttl_s=-1)
    with pytest.raises(Refused, match="expired"):
        _enroll(registry, "old", "s")
    registry.add_invitation(token_id="t1", name="bank-b", secret="s", ttl_s=60)
    with pytest.raises(Refused, match="already has a pending invitation"):
        registry.add_invitation(token_id="t2", name="bank-b", secret="s", ttl_s=60)
    _enroll(registry, "t1", "s")
    with pytest.raises(Refused, match="already enrolled"):
        registry.add_invitation(token_id="t3", name="bank-b", secret="s", ttl_s=60)
    registry.mark_revoked("bank-b")
    registry.add_invitation(token_id="t4", name="bank-b", secret="s", ttl_s=60)
    _enroll(registry, "t4", "s")  # a revoked name may be enrolled again (key rotation)


def test_failed_registration_leaves_the_token_unused(tmp_path: Path) -> None:
    registry = _registry(tmp_path)
    registry.add_invitation(token_id="t1", name="hospital-a", secret="s", ttl_s=60)

    def broken(name: str, key: str) -> int:
        raise ConnectionError("SuperLink down")

    with pytest.raises(Refused, match="SuperLink down"):
        registry.enroll(token_id="t1", secret="s", public_key=KEY, fingerprint="fp",
                        peer="p", register=broken)  # fmt: skip
    _enroll(registry, "t1", "s")


def test_two_joins_racing_with_one_token_exactly_one_wins(tmp_path: Path) -> None:
    registry = _registry(tmp_path)
    registry.add_invitation(token_id="t1", name="hospital-a", secret="s", ttl_s=60)
    barrier = threading.Barrier(8)
    results: list[str] = []

    def join() -> None:
        barrier.wait()
        try:
            _enroll(Registry(tmp_path / "enrollment.db"), "t1", "s")
            results.append("won")
        except Refused as err:
            results.append(str(err))

    threads = [threading.Thread(target=join) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results.count("won") == 1
    assert all("already used" in r or "already enrolled" in r for r in results if r != "won")


def test_rate_limiter_blocks_a_peer_after_repeated_failures() -> None:
    now = [0.0]
    limiter = RateLimiter(max_failures=3, window_s=60.0, clock=lambda: now[0])
    for _ in range(3):
        assert limiter.admit("ipv4:10.0.0.1") == (True, None)  # each counts as failed
    admitted, report = limiter.admit("ipv4:10.0.0.1")
    assert not admitted and report is not None and "blocked" in report
    assert limiter.admit("ipv4:10.0.0.1") == (False, None)  # reported once per block
    assert limiter.admit("ipv4:10.0.0.2")[0]
    assert limiter.flush() == []  # still blocked: nothing to summarise yet
    now[0] = 61.0
    assert limiter.flush() == ["enrollment from ipv4:10.0.0.1: 2 attempt(s) blocked in 61 s"]
    assert limiter.admit("ipv4:10.0.0.1")[0]


def test_a_success_takes_its_mark_back() -> None:
    limiter = RateLimiter(max_failures=2, window_s=60.0)
    for _ in range(5):
        assert limiter.admit("p")[0]
        limiter.succeeded("p")


def test_peer_host_drops_the_port() -> None:
    assert peer_host("ipv4:127.0.0.1:53211") == "ipv4:127.0.0.1"
    assert peer_host("ipv6:[::1]:53211") == "ipv6:[::1]"


# A key made by `ssh-keygen -t ecdsa -b 384`; `ssh-keygen -lf` printed the fingerprint.
SSH_KEY = (
    "ecdsa-sha2-nistp384 AAAAE2VjZHNhLXNoYTItbmlzdHAzODQAAAAIbmlzdHAzODQAAABhBK7HxxLK/n/UEQ3dKyMq5+"
    "LjJ38xdCaaVNPuTZBQAlmxw2/VQeJYvC8fW23Yj+vwMHwV4AuvjeyU9tpakQY5EeI9y/rPITFzPvKGAGPfPSLQNBk0P8D/"
    "UQAPmIGl+WHdNg== root@vm"
)


def test_key_fingerprint_matches_ssh_keygen() -> None:
    assert key_fingerprint(SSH_KEY) == "SHA256:3xV6sZZ0Cpj4/3WJ8Jn+jjJhhgXqd/JZwRkGr/zZJKI"


def test_node_keys_must_be_p384() -> None:
    from server.operator.flower_control import load_node_public_key

    assert load_node_public_key(SSH_KEY).curve.name == "secp384r1"
    rsa = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl x"
    with pytest.raises(ValueError, match="P-384"):
        load_node_public_key(rsa)
    with pytest.raises(ValueError, match="not an OpenSSH EC P-384 key"):
        load_node_public_key("garbage")


def test_pki_chain_names_and_pin(tmp_path: Path) -> None:
    pki = create_pki(tmp_path / "fed", ["fed.example.org", "10.0.0.5"])
    for key in (pki.ca_key, pki.server_key):
        assert key.stat().st_mode & 0o777 == 0o600
    leaf, ca = x509.load_pem_x509_certificates(pki.server_cert.read_bytes())
    assert ca.public_bytes(serialization.Encoding.PEM) == pki.ca_cert.read_bytes()
    leaf.verify_directly_issued_by(ca)
    sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    names = {str(v) for v in sans.get_values_for_type(x509.DNSName)}
    ips = {str(v) for v in sans.get_values_for_type(x509.IPAddress)}
    assert names == {"fed.example.org", "localhost"} and ips == {"10.0.0.5", "127.0.0.1"}
    assert ca_pin(pki.ca_cert.read_bytes()).startswith("sha256:")
    with pytest.raises(FileExistsError, match="already holds a federation"):
        create_pki(tmp_path / "fed", ["other"])

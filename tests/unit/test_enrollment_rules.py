"""Enrollment hardening, in-process and torch-free: node names, one pending invitation per
name, revoke cancels invitations, the atomic rate limiter and its summarised log, every service
error answered and audited, bounded node keys, Flower errors in plain words, the federation
folder's lock and permissions, and `server nodes` reconciled with Flower."""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from protos.fedlora.enroll.v1 import enroll_pb2
from protos.tokens import check_node_name, secret_hash
from server.operator.enrollment.keys import fingerprint_of_pem, parse_node_key
from server.operator.enrollment.registry import NodeRecord, Refused, Registry
from server.operator.enrollment.service import EnrollmentServicer, RateLimiter
from server.operator.federation_dir import AlreadyRunning, FederationDir, init_federation
from server.operator.flower_control import FlowerNode, _refused
from server.operator.roster import node_lines, reconcile

# A key made by `ssh-keygen -t ecdsa -b 384`; `ssh-keygen -lf` printed the fingerprint.
SSH_KEY = (
    "ecdsa-sha2-nistp384 AAAAE2VjZHNhLXNoYTItbmlzdHAzODQAAAAIbmlzdHAzODQAAABhBK7HxxLK/n/UEQ3dKyMq5+"
    "LjJ38xdCaaVNPuTZBQAlmxw2/VQeJYvC8fW23Yj+vwMHwV4AuvjeyU9tpakQY5EeI9y/rPITFzPvKGAGPfPSLQNBk0P8D/"
    "UQAPmIGl+WHdNg== root@vm"
)
FINGERPRINT = "SHA256:3xV6sZZ0Cpj4/3WJ8Jn+jjJhhgXqd/JZwRkGr/zZJKI"


# --- names -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["hospital-a", "Bank_B.eu", "a", "x" * 64, "7eleven"])
def test_safe_names_pass(name: str) -> None:
    assert check_node_name(name) == name


@pytest.mark.parametrize(
    ("name", "says"),
    [
        ("x" * 65, "65 characters"),
        ("h\u043espital-a", "U+043E CYRILLIC SMALL LETTER O"),  # looks like hospital-a
        ("caf\u00e9", "U+00E9"),
        ("-rf", "starting with a letter or digit"),
        (".hidden", "starting with a letter or digit"),
        ("../../etc/x", "ASCII letters"),
        ("a b", "ASCII letters"),
        ("", "1 to 64"),
    ],
)
def test_unsafe_names_are_refused_with_the_rule(name: str, says: str) -> None:
    with pytest.raises(ValueError, match="`--name`") as err:
        check_node_name(name)
    assert says in str(err.value)


def test_a_long_name_is_not_echoed_whole(tmp_path: Path) -> None:
    with pytest.raises(ValueError) as err:
        Registry(tmp_path / "e.db").add_invitation(
            token_id="t", name="n" * 10_000, secret="s", ttl_s=60
        )
    assert len(str(err.value)) < 400


# --- invitations -----------------------------------------------------------------------------


def _enroll(registry: Registry, token_id: str, *, node_id: int = 7) -> NodeRecord:
    return registry.enroll(token_id=token_id, secret="s", public_key="k", fingerprint="fp",
                           peer="ipv4:10.0.0.1", register=lambda name, key: node_id)  # fmt: skip


def test_one_pending_invitation_per_name_and_expired_ones_do_not_count(tmp_path: Path) -> None:
    registry = Registry(tmp_path / "e.db")
    registry.add_invitation(token_id="old", name="bank-b", secret="s", ttl_s=-1)
    registry.add_invitation(token_id="t1", name="bank-b", secret="s", ttl_s=60)
    with pytest.raises(Refused, match="--cancel bank-b"):
        registry.add_invitation(token_id="t2", name="bank-b", secret="s", ttl_s=60)
    registry.add_invitation(token_id="t3", name="clinic-c", secret="s", ttl_s=60)
    assert [(i.token_id, i.name) for i in registry.pending()] == [
        ("t1", "bank-b"), ("t3", "clinic-c")]  # fmt: skip
    assert registry.cancel_invitations("bank-b") == 2  # the pending one and the expired one
    with pytest.raises(Refused, match="unknown token"):
        _enroll(registry, "t1")
    registry.add_invitation(token_id="t4", name="bank-b", secret="s", ttl_s=60)
    assert _enroll(registry, "t4").name == "bank-b"


def test_revoke_cancels_older_invitations_of_that_name(tmp_path: Path) -> None:
    """The issue's scenario: invite X twice (as an older fedlora allowed), join with the
    first, revoke X: the second token must not re-enroll X."""
    registry = Registry(tmp_path / "e.db")
    registry.add_invitation(token_id="t1", name="x-node", secret="s", ttl_s=60)
    registry.cancel_invitations("nobody")  # (no-op)
    _enroll(registry, "t1")
    with sqlite3.connect(registry.path) as conn:  # a second invitation from before the rule
        conn.execute("INSERT INTO invitations VALUES ('t2', 'x-node', ?, 0, 1e12, NULL, NULL)",
                     (secret_hash("s"),))  # fmt: skip
    assert registry.mark_revoked("x-node") == 1
    with pytest.raises(Refused, match="unknown token"):
        _enroll(registry, "t2")
    assert registry.node("x-node").status == "revoked"  # type: ignore[union-attr]


def test_revoke_and_invitations_commands(tmp_path: Path) -> None:
    from server.operator.commands import invitations, invite, revoke

    root = tmp_path / "FED"
    init_federation(root, ["127.0.0.1"])
    token = invite(root, name="hospital-a", ttl="1h")
    assert token.startswith("fl1.")
    table = invitations(root)
    assert table[0].split()[:2] == ["name", "created"] and table[1].startswith("hospital-a")
    with pytest.raises(Refused, match="pending invitation"):
        invite(root, name="hospital-a", ttl="1h")
    assert "cancelled its pending invitation" in revoke(root, "hospital-a")
    assert invitations(root) == [
        "(no pending invitations: `fedlora server invite --dir FED --name NAME`)"]  # fmt: skip
    invite(root, name="bank-b", ttl="1h")
    assert invitations(root, cancel="bank-b") == [
        "cancelled 1 invitation(s) for bank-b: its token no longer enrolls"]  # fmt: skip
    with pytest.raises(ValueError, match="`--cancel` 'bank-b' has no pending invitation"):
        invitations(root, cancel="bank-b")


# --- the rate limiter and the service ---------------------------------------------------------


class _Aborted(Exception):
    pass


class _Context:
    def __init__(self, peer: str = "ipv4:10.0.0.9:5555") -> None:
        self._peer = peer

    def peer(self) -> str:
        return self._peer

    def abort(self, code: grpc.StatusCode, message: str) -> None:
        raise _Aborted(code, message)


class _SlowRefusals(Registry):
    """Every enrollment takes a while and fails, like a wrong secret."""

    calls = 0

    def enroll(self, **kwargs: Any) -> NodeRecord:
        type(self).calls += 1
        time.sleep(0.3)
        raise Refused("unknown token: ask the operator for a new one")


def _servicer(registry: Registry, limiter: RateLimiter | None = None) -> EnrollmentServicer:
    return EnrollmentServicer(registry=registry, register=lambda n, k: 1, ca_pem=b"ca",
                              superlink_address="x:1", limiter=limiter)  # fmt: skip


def _request(key: str = SSH_KEY, token_id: str = "t", secret: str = "s") -> Any:
    return enroll_pb2.EnrollRequest(token_id=token_id, token_secret=secret, public_key=key)


def _call(servicer: EnrollmentServicer, request: Any, peer: str = "ipv4:10.0.0.9:1") -> Any:
    try:
        return servicer.Enroll(request, _Context(peer))  # type: ignore[arg-type]
    except _Aborted as err:
        return err.args


def test_racing_failures_are_capped_by_the_limit(tmp_path: Path) -> None:
    """Record-then-check: 8 simultaneous wrong guesses, a limit of 5 -> exactly 5 handled
    (checking before recording let all 8 through)."""
    _SlowRefusals.calls = 0
    servicer = _servicer(_SlowRefusals(tmp_path / "e.db"), RateLimiter(max_failures=5))
    barrier = threading.Barrier(8)
    answers: list[Any] = []

    def guess() -> None:
        barrier.wait()
        answers.append(_call(servicer, _request()))

    threads = [threading.Thread(target=guess) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert _SlowRefusals.calls == 5
    codes = sorted(str(a[0]) for a in answers)
    assert codes.count(str(grpc.StatusCode.RESOURCE_EXHAUSTED)) == 3


def test_a_flood_is_summarised_not_logged_one_by_one(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    registry = Registry(tmp_path / "e.db")
    now = [0.0]
    servicer = _servicer(registry, RateLimiter(max_failures=5, window_s=60, clock=lambda: now[0]))
    with caplog.at_level(logging.WARNING, logger="fedlora.enrollment"):
        for _ in range(200):
            _call(servicer, _request(token_id="nope"))
        now[0] = 100.0
        _call(servicer, _request(token_id="nope"), peer="ipv4:10.0.0.2:1")  # another peer
    blocked = [r.getMessage() for r in caplog.records if "blocked" in r.getMessage()]
    assert len(blocked) == 2, blocked  # the block starts; it ends with its count
    assert "195 attempt(s) blocked" in blocked[1]
    outcomes = [e[3] for e in registry.events()]
    assert outcomes.count("blocked") == 2 and outcomes.count("refused") == 6
    assert len(caplog.records) <= 5 + 1 + 2


@pytest.mark.parametrize(
    ("key", "says"),
    [
        ("pem", "PEM, not OpenSSH"),
        ("ed25519", "not an OpenSSH EC P-384 key"),
        ("p256", "EC P-384"),
        (SSH_KEY.replace("root@vm", "c" * 3_000_000), "characters (at most 1024)"),
        (SSH_KEY.replace("root@vm", "c" * 300), "comment must be printable and at most 256"),
        (SSH_KEY.replace("root@vm", "bad\x07bell"), "comment must be printable"),
        ("ecdsa-sha2-nistp384 !!!notbase64", "does not decode"),
        ("", "got empty"),
    ],
)
def test_bad_keys_are_answered_and_audited(tmp_path: Path, key: str, says: str) -> None:
    made = {
        "pem": ec.generate_private_key(ec.SECP384R1()).public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo),
        "ed25519": ed25519.Ed25519PrivateKey.generate().public_key().public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH),
        "p256": ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH),
    }  # fmt: skip
    text = made[key].decode() if key in made else key
    registry = Registry(tmp_path / "e.db")
    code, message = _call(_servicer(registry), _request(key=text))
    assert code == grpc.StatusCode.PERMISSION_DENIED and says in message
    assert registry.events()[-1][3] == "refused" and says in registry.events()[-1][4]


def test_an_unexpected_error_is_answered_audited_and_counted(tmp_path: Path) -> None:
    class Broken(Registry):
        def enroll(self, **kwargs: Any) -> NodeRecord:
            raise OSError("disk full")

    registry = Broken(tmp_path / "e.db")
    limiter = RateLimiter(max_failures=1)
    code, message = _call(_servicer(registry, limiter), _request())
    assert code == grpc.StatusCode.INTERNAL and "FED/logs/enrollment.log" in message
    assert registry.events()[-1][3:] == ("error", "OSError: disk full")
    assert not limiter.admit("ipv4:10.0.0.9")[0]


def test_overlong_token_fields_are_refused(tmp_path: Path) -> None:
    code, message = _call(_servicer(Registry(tmp_path / "e.db")), _request(secret="s" * 10_000))
    assert code == grpc.StatusCode.PERMISSION_DENIED and "token is damaged" in message


def test_keys_are_bounded_and_stored_without_comment() -> None:
    key = parse_node_key(SSH_KEY)
    assert key.fingerprint == FINGERPRINT and key.comment == "root@vm"
    assert key.openssh == " ".join(SSH_KEY.split()[:2])
    pem = key.key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert fingerprint_of_pem(pem) == FINGERPRINT and fingerprint_of_pem(b"junk") == "?"


def _http_error(code: int, body: bytes) -> httpx.HTTPStatusError:
    request = httpx.Request("POST", "https://127.0.0.1:9093/v1/control/register-node")
    response = httpx.Response(code, request=request, content=body)
    return httpx.HTTPStatusError("raw", request=request, response=response)


def test_flower_errors_read_as_sentences() -> None:
    twice = str(_refused(_http_error(412, b"{}"), "register the node's key"))
    assert "already registered" in twice and "https://" not in twice and "412" not in twice
    other = str(_refused(_http_error(400, b'{"message": "Invalid key"}'), "register the key"))
    assert other == "the SuperLink refused to register the key (HTTP 400: Invalid key)"
    down = str(_refused(httpx.ConnectError("refused"), "list nodes"))
    assert down == "could not reach the SuperLink to list nodes (ConnectError)"


# --- the federation folder ----------------------------------------------------------------------


def test_folder_is_private_and_locked(tmp_path: Path) -> None:
    root = tmp_path / "FED"
    init_federation(root, ["127.0.0.1"])
    fed = FederationDir(root)
    assert root.stat().st_mode & 0o777 == 0o700
    for path in root.rglob("*"):
        assert path.stat().st_mode & 0o777 == (0o700 if path.is_dir() else 0o600), path
    (root / "logs" / "old.log").write_text("x")
    (root / "logs" / "old.log").chmod(0o644)
    fed.restrict()
    assert (root / "logs" / "old.log").stat().st_mode & 0o777 == 0o600
    with fed.lock(), pytest.raises(AlreadyRunning, match=f"pid {os.getpid()}"):  # noqa: SIM117
        with fed.lock():
            pass
    with fed.lock():  # released
        pass


# --- server nodes --------------------------------------------------------------------------------


def test_nodes_are_reconciled_with_flower() -> None:
    records = [
        NodeRecord("hospital-a", 1, "fpA", 0.0, "enrolled"),
        NodeRecord("bank-b", 2, "fpB", 0.0, "enrolled"),
        NodeRecord("clinic-c", 3, "fpC", 0.0, "enrolled"),
        NodeRecord("old-d", 4, "fpD", 0.0, "revoked"),
    ]
    flower = [
        FlowerNode(1, "hospital-a", "online", "fpA"),
        FlowerNode(2, "bank-b", "unregistered", "fpB"),  # unregistered out of band
        FlowerNode(4, "old-d", "unregistered", "fpD"),
        FlowerNode(99, "intruder", "online", "SHA256:evil"),  # registered out of band
        FlowerNode(98, "gone", "unregistered", "SHA256:old"),  # harmless now
    ]
    view = reconcile(records, flower)
    assert [(r.name, s) for r, s in view.rows] == [
        ("hospital-a", "online"), ("bank-b", "unregistered"),
        ("clinic-c", "unregistered"), ("old-d", "revoked")]  # fmt: skip
    assert [n.node_id for n in view.strangers] == [99]
    text = "\n".join(node_lines(view, "/srv/FED"))
    assert "WARNING: Flower accepts node 99 (intruder, online, key SHA256:evil)" in text
    assert "flwr supernode unregister 99" in text and "NOTE: bank-b is enrolled" in text
    offline = reconcile(records, None)  # server down: the registry as it is
    assert [s for _, s in offline.rows] == ["enrolled", "enrolled", "enrolled", "revoked"]

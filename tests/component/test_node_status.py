"""``NodeStatus`` over real TLS on loopback, in-process (no Flower): only a caller that signs a
fresh nonce with the key's private half learns whether the key is enrolled, revoked or unknown;
``node start``'s line for each; an older server without the call is no answer."""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from client.node.folder import NodeDir, NodeInfo, generate_key
from client.node.status import ENROLLED, REVOKED, UNKNOWN, ask_status, refusal, sign_status_request
from protos.fedlora.enroll.v1 import enroll_pb2, enroll_pb2_grpc
from server.operator.enrollment.keys import parse_node_key
from server.operator.enrollment.registry import Registry
from server.operator.enrollment.service import EnrollmentServicer, RateLimiter
from server.operator.enrollment.status import Nonces
from server.operator.pki import ServerPki, create_pki


@dataclass
class Service:
    address: str
    registry: Registry
    servicer: enroll_pb2_grpc.EnrollmentServicer
    pki: ServerPki

    def node(self, folder: Path) -> tuple[NodeDir, NodeInfo]:
        """A node folder with its own key, as `node join` leaves it (not enrolled yet)."""
        folder.mkdir()
        node = NodeDir(folder)
        generate_key(node)
        node.ca.write_bytes(self.pki.ca_cert.read_bytes())
        info = NodeInfo("n", 0, "127.0.0.1:9092", "sha256:-", "now", enrollment=self.address)
        return node, info

    def enroll(self, node: NodeDir, name: str) -> None:
        key = parse_node_key(node.pub.read_text())
        self.registry.add_invitation(token_id=name, name=name, secret="s", ttl_s=60)
        self.registry.enroll(token_id=name, secret="s", public_key=key.openssh,
                             fingerprint=key.fingerprint, peer="test",
                             register=lambda _n, _k: 7)  # fmt: skip

    def stub(self) -> Iterator[enroll_pb2_grpc.EnrollmentStub]:
        creds = grpc.ssl_channel_credentials(self.pki.ca_cert.read_bytes())
        with grpc.secure_channel(self.address, creds) as channel:
            yield enroll_pb2_grpc.EnrollmentStub(channel)


def _serve(tmp_path: Path, servicer: enroll_pb2_grpc.EnrollmentServicer | None = None,
           **options: object) -> Iterator[Service]:  # fmt: skip
    pki = create_pki(tmp_path / "fed", ["127.0.0.1"])
    registry = Registry(tmp_path / "e.db")
    servicer = servicer or EnrollmentServicer(
        registry=registry, register=lambda _n, _k: 1, ca_pem=pki.ca_cert.read_bytes(),
        superlink_address="127.0.0.1:9092", **options,  # type: ignore[arg-type]
    )  # fmt: skip
    server = grpc.server(futures.ThreadPoolExecutor(2))
    enroll_pb2_grpc.add_EnrollmentServicer_to_server(servicer, server)
    creds = grpc.ssl_server_credentials([(pki.server_key.read_bytes(),
                                          pki.server_cert.read_bytes())])  # fmt: skip
    port = server.add_secure_port("127.0.0.1:0", creds)
    server.start()
    try:
        yield Service(f"127.0.0.1:{port}", registry, servicer, pki)
    finally:
        server.stop(grace=None)


@pytest.fixture
def service(tmp_path: Path) -> Iterator[Service]:
    yield from _serve(tmp_path)


def _status_error(stub: enroll_pb2_grpc.EnrollmentStub,
                  request: enroll_pb2.NodeStatusRequest) -> grpc.RpcError:  # fmt: skip
    with pytest.raises(grpc.RpcError) as caught:
        stub.NodeStatus(request, timeout=10)
    return caught.value


def test_enrolled_revoked_and_unknown_keys(service: Service, tmp_path: Path) -> None:
    node, info = service.node(tmp_path / "a")
    assert ask_status(node, info) == ask_status(node, info)  # each call takes a fresh nonce
    unknown = ask_status(node, info)
    assert unknown is not None and unknown.status == UNKNOWN and unknown.name == ""
    line = refusal(unknown, node, info)
    assert line is not None and line.startswith("the server does not know this node's key")

    service.enroll(node, "hospital-a")
    enrolled = ask_status(node, info)
    assert enrolled is not None and (enrolled.status, enrolled.name) == (ENROLLED, "hospital-a")
    assert refusal(enrolled, node, info) is None

    before = time.time()
    service.registry.mark_revoked("hospital-a")
    revoked = ask_status(node, info)
    assert revoked is not None and (revoked.status, revoked.name) == (REVOKED, "hospital-a")
    assert revoked.revoked_at is not None and before <= revoked.revoked_at <= time.time()
    day = time.strftime("%Y-%m-%d", time.gmtime(revoked.revoked_at))
    line = refusal(revoked, node, info)
    assert line is not None
    assert line.startswith(f"this node was revoked by the operator on {day} ")
    assert "ask for a new invitation (fedlora node join" in line
    answers = [e[4] for e in service.registry.events() if e[3] == "status"]
    assert [a.rsplit(" ", 1)[1] for a in answers] == ["unknown"] * 3 + ["enrolled", "revoked"]


def test_a_caller_without_the_private_key_learns_nothing(service: Service, tmp_path: Path) -> None:
    """Signed with another key, the request for an enrolled key and for an unknown key get the
    same refusal, and the registry is not consulted."""
    enrolled, _ = service.node(tmp_path / "enrolled")
    stranger, _ = service.node(tmp_path / "stranger")
    attacker, _ = service.node(tmp_path / "attacker")
    service.enroll(enrolled, "hospital-a")
    refusals = []
    for victim in (enrolled, stranger):
        for stub in service.stub():
            nonce = stub.Challenge(enroll_pb2.ChallengeRequest(), timeout=10).nonce
            forged = sign_status_request(attacker, nonce, now=int(time.time()))
            forged.public_key = victim.pub.read_text()  # claims the victim's key
            err = _status_error(stub, forged)
            refusals.append((err.code(), err.details()))
    assert refusals[0] == refusals[1]
    assert refusals[0][0] == grpc.StatusCode.PERMISSION_DENIED
    assert "signature does not verify" in refusals[0][1]
    assert [e[3] for e in service.registry.events()].count("status") == 0


def test_replayed_and_stale_requests_are_refused(tmp_path: Path) -> None:
    now = [1000.0]
    nonces = Nonces(ttl_s=60.0, clock=lambda: now[0])
    for service in _serve(tmp_path, nonces=nonces):
        node, _ = service.node(tmp_path / "a")
        service.enroll(node, "hospital-a")
        for stub in service.stub():
            nonce = stub.Challenge(enroll_pb2.ChallengeRequest(), timeout=10).nonce
            request = sign_status_request(node, nonce, now=int(time.time()))
            assert (
                stub.NodeStatus(request, timeout=10).status
                == enroll_pb2.NodeStatusResponse.ENROLLED
            )
            replayed = _status_error(stub, request)
            assert replayed.code() == grpc.StatusCode.PERMISSION_DENIED
            assert "nonce is unknown, already used or expired" in replayed.details()

            nonce = stub.Challenge(enroll_pb2.ChallengeRequest(), timeout=10).nonce
            now[0] += 61.0  # the nonce outlived its minute
            late = _status_error(stub, sign_status_request(node, nonce, now=int(time.time())))
            assert "nonce is unknown, already used or expired" in late.details()

            nonce = stub.Challenge(enroll_pb2.ChallengeRequest(), timeout=10).nonce
            old = sign_status_request(node, nonce, now=int(time.time()) - 3600)
            stale = _status_error(stub, old)
            assert "from the server's clock" in stale.details()

            invented = sign_status_request(node, b"\0" * 32, now=int(time.time()))
            assert "nonce is unknown" in _status_error(stub, invented).details()
        refused = [e for e in service.registry.events() if e[3] == "refused"]
        assert len(refused) == 4 and all(e[4].startswith("status: ") for e in refused)


def test_failed_status_requests_are_rate_limited(tmp_path: Path) -> None:
    limiter = RateLimiter(max_failures=2, window_s=60.0)
    for service in _serve(tmp_path, limiter=limiter):
        node, info = service.node(tmp_path / "a")
        for stub in service.stub():
            for _ in range(2):
                invented = sign_status_request(node, b"\1" * 32, now=int(time.time()))
                assert _status_error(stub, invented).code() == grpc.StatusCode.PERMISSION_DENIED
            blocked = _status_error(stub, invented)
            assert blocked.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert ask_status(node, info) is None  # blocked: no nonce either, so no answer
        outcomes = [e[3] for e in service.registry.events()]
        assert outcomes.count("refused") == 2 and outcomes.count("blocked") == 1


def test_a_server_without_node_status_is_no_answer(tmp_path: Path) -> None:
    """A server that predates the call answers UNIMPLEMENTED: `node start` keeps its retries."""
    for service in _serve(tmp_path, servicer=enroll_pb2_grpc.EnrollmentServicer()):
        node, info = service.node(tmp_path / "a")
        assert ask_status(node, info) is None
        assert ask_status(node, NodeInfo("n", 0, "x:1", "sha256:-", "now")) is None  # old folder
    assert ask_status(node, info, timeout_s=2.0) is None  # the server is gone

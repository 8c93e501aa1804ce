"""Ask the federation what it holds for this node's key, proving possession of ``node.key``.

``fedlora node start`` asks before it starts the SuperNode and again when the SuperLink keeps
refusing to activate it, so a revoked or unknown key is named at once instead of after minutes
of retries. A server that predates the call, or cannot be reached, answers nothing (None) and
the node carries on as before. Torch-free.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime

import grpc
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from client.node.folder import NodeDir, NodeInfo
from protos.fedlora.enroll.v1 import enroll_pb2, enroll_pb2_grpc
from protos.node_status import status_payload

TIMEOUT_S = 10.0
ENROLLED, REVOKED, UNKNOWN = "enrolled", "revoked", "unknown"


@dataclass(frozen=True)
class KeyStatus:
    """What the enrollment service holds for this node's key."""

    status: str  # ENROLLED, REVOKED or UNKNOWN
    name: str = ""
    revoked_at: float | None = None


def sign_status_request(node: NodeDir, nonce: bytes, *, now: int) -> enroll_pb2.NodeStatusRequest:
    """A ``NodeStatus`` request for ``nonce``, signed with ``node.key``."""
    key = serialization.load_ssh_private_key(node.key.read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey), "check_key_pair ran first"
    public = node.pub.read_text().strip()
    payload = status_payload(public_key=public, nonce=nonce, timestamp=now)
    signature = key.sign(payload, ec.ECDSA(hashes.SHA384()))
    return enroll_pb2.NodeStatusRequest(
        public_key=public, nonce=nonce, timestamp=now, signature=signature
    )


def ask_status(node: NodeDir, info: NodeInfo, *, timeout_s: float = TIMEOUT_S) -> KeyStatus | None:
    """The key's status, or None when the server cannot say (it predates ``NodeStatus``, is
    not reachable, or the node folder does not record the enrollment address)."""
    if not info.enrollment:
        return None
    if info.insecure:
        channel = grpc.insecure_channel(info.enrollment)
    else:
        creds = grpc.ssl_channel_credentials(node.ca.read_bytes())
        channel = grpc.secure_channel(info.enrollment, creds)
    try:
        with channel:
            stub = enroll_pb2_grpc.EnrollmentStub(channel)  # type: ignore[no-untyped-call]
            nonce = stub.Challenge(enroll_pb2.ChallengeRequest(), timeout=timeout_s).nonce
            request = sign_status_request(node, nonce, now=int(time.time()))
            reply = stub.NodeStatus(request, timeout=timeout_s)
    except grpc.RpcError:  # UNIMPLEMENTED (an older server), unreachable, refused: no answer
        return None
    kinds = enroll_pb2.NodeStatusResponse
    if reply.status == kinds.REVOKED:
        return KeyStatus(REVOKED, reply.node_name, reply.revoked_at or None)
    if reply.status == kinds.UNKNOWN:
        return KeyStatus(UNKNOWN)
    if reply.status == kinds.ENROLLED:
        return KeyStatus(ENROLLED, reply.node_name)
    return None


def refusal(status: KeyStatus | None, node: NodeDir, info: NodeInfo) -> str | None:
    """The one line ``node start`` stops with when the server refuses this key; else None."""
    join = "fedlora node join TOKEN --dir NEW_FOLDER"
    if status is None or status.status == ENROLLED:
        return None
    if status.status == REVOKED:
        when = (
            datetime.fromtimestamp(status.revoked_at, UTC).strftime("%Y-%m-%d %H:%M UTC")
            if status.revoked_at
            else "an unknown date"
        )
        return f"this node was revoked by the operator on {when}; ask for a new invitation ({join})"
    return (
        f"the server does not know this node's key ({node.pub}): this folder was not enrolled "
        f"in the federation at {info.enrollment}, or it was set up again; ask the operator for "
        f"a new invitation ({join})"
    )

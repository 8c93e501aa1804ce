"""``NodeStatus``: a node that proves it holds a key learns what the federation holds for it.

The node asks ``Challenge`` for a nonce, signs (service, its public key, the nonce, the time)
with ``node.key`` (protos/node_status.py) and sends the signature with its public key. The
signature is checked before the registry is read: a caller without the private key learns
nothing about whether a key is enrolled. Each nonce is single use and lives a minute; the
signed time must be within ``MAX_CLOCK_SKEW_S`` of the server's. Torch-free, Flower-free.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from protos.fedlora.enroll.v1 import enroll_pb2
from protos.node_status import MAX_SIGNATURE_BYTES, NONCE_BYTES, status_payload
from server.operator.enrollment.keys import NodeKey, parse_node_key
from server.operator.enrollment.registry import ENROLLED, REVOKED, NodeRecord

NONCE_TTL_S = 60.0
MAX_NONCES = 4096  # outstanding challenges; the oldest is dropped beyond this
MAX_CLOCK_SKEW_S = 300.0

Status = enroll_pb2.NodeStatusResponse


@dataclass
class Nonces:
    """Outstanding challenge nonces: each is taken at most once, within ``ttl_s``."""

    ttl_s: float = NONCE_TTL_S
    capacity: int = MAX_NONCES
    clock: Callable[[], float] = time.monotonic
    _issued: OrderedDict[bytes, float] = field(default_factory=OrderedDict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def issue(self) -> bytes:
        nonce = secrets.token_bytes(NONCE_BYTES)
        with self._lock:
            self._issued[nonce] = self.clock()
            while len(self._issued) > self.capacity:
                self._issued.popitem(last=False)
        return nonce

    def take(self, nonce: bytes) -> bool:
        """True once for a nonce issued less than ``ttl_s`` ago; it is gone afterwards."""
        with self._lock:
            issued = self._issued.pop(nonce, None)
        return issued is not None and self.clock() - issued < self.ttl_s


def verify_request(
    request: enroll_pb2.NodeStatusRequest,
    nonces: Nonces,
    *,
    now: float,
    max_skew_s: float = MAX_CLOCK_SKEW_S,
) -> NodeKey:
    """The caller's key when the request proves possession of it; else ``ValueError`` with
    the reason (none of which depends on the registry)."""
    key = parse_node_key(request.public_key)
    if not nonces.take(request.nonce):
        raise ValueError(
            "the nonce is unknown, already used or expired: ask for a new challenge and sign "
            f"within {nonces.ttl_s:.0f} s"
        )
    if abs(now - request.timestamp) > max_skew_s:
        raise ValueError(
            f"the signed time is {request.timestamp - now:+.0f} s from the server's clock (at most "
            f"{max_skew_s:.0f} s): set this machine's clock (NTP)"
        )
    if len(request.signature) > MAX_SIGNATURE_BYTES:
        raise ValueError("the signature is not an ECDSA P-384 signature (too long)")
    payload = status_payload(
        public_key=key.openssh, nonce=request.nonce, timestamp=request.timestamp
    )
    try:
        key.key.verify(request.signature, payload, ec.ECDSA(hashes.SHA384()))
    except InvalidSignature:
        raise ValueError(
            "the signature does not verify with the given public key: sign with the node.key "
            "whose public half is node.pub"
        ) from None
    return key


def status_response(record: NodeRecord | None) -> enroll_pb2.NodeStatusResponse:
    """The answer for a verified caller: its key's record, or UNKNOWN."""
    if record is None:
        return Status(status=Status.UNKNOWN)
    if record.status == REVOKED:
        return Status(
            status=Status.REVOKED, node_name=record.name, revoked_at=record.revoked_at or 0.0
        )
    assert record.status == ENROLLED, record.status
    return Status(status=Status.ENROLLED, node_name=record.name)

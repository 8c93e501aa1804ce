"""The enrollment gRPC service (``fedlora.enroll.v1.Enrollment``), served beside the SuperLink.

A node presents a token and its public key over TLS; the service checks the token (hashed,
constant time, single use, not expired), registers the key with Flower's node authentication,
and returns the CA certificate, the Fleet API address and the node's name. Failed attempts are
rate-limited per peer address. Every enrollment and refusal is logged. No torch here.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass, field

import grpc

from protos.fedlora.enroll.v1 import enroll_pb2, enroll_pb2_grpc
from server.operator.enrollment.registry import Refused, Register, Registry
from server.operator.flower_control import load_node_public_key

log = logging.getLogger("fedlora.enrollment")

MAX_FAILURES = 5  # per peer address and window
FAILURE_WINDOW_S = 60.0


def key_fingerprint(openssh: str) -> str:
    """``SHA256:<base64>`` of the key blob, as ``ssh-keygen -l`` prints it."""
    blob = base64.b64decode(openssh.split()[1])
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


@dataclass
class RateLimiter:
    """At most ``max_failures`` failed attempts per peer host in a sliding window."""

    max_failures: int = MAX_FAILURES
    window_s: float = FAILURE_WINDOW_S
    clock: Callable[[], float] = time.monotonic
    _failures: dict[str, deque[float]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def blocked(self, peer: str) -> bool:
        with self._lock:
            recent = self._recent(peer)
            return len(recent) >= self.max_failures

    def failed(self, peer: str) -> None:
        with self._lock:
            self._recent(peer).append(self.clock())

    def _recent(self, peer: str) -> deque[float]:
        recent = self._failures.setdefault(peer, deque())
        while recent and recent[0] <= self.clock() - self.window_s:
            recent.popleft()
        return recent


def peer_host(peer: str) -> str:
    """``ipv4:127.0.0.1:53211`` -> ``ipv4:127.0.0.1`` (the port changes per connection)."""
    return peer.rsplit(":", 1)[0] if peer.count(":") >= 2 else peer


class EnrollmentServicer(enroll_pb2_grpc.EnrollmentServicer):
    def __init__(
        self,
        *,
        registry: Registry,
        register: Register,
        ca_pem: bytes,
        superlink_address: str,
        limiter: RateLimiter | None = None,
    ) -> None:
        self.registry = registry
        self.register = register
        self.ca_pem = ca_pem
        self.superlink_address = superlink_address
        self.limiter = limiter or RateLimiter()

    def Enroll(
        self, request: enroll_pb2.EnrollRequest, context: grpc.ServicerContext
    ) -> enroll_pb2.EnrollResponse:
        peer = peer_host(context.peer())
        if self.limiter.blocked(peer):
            self.registry.log(peer=peer, name=None, outcome="refused", reason="rate limited")
            log.warning("enrollment from %s refused: too many failed attempts", peer)
            context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"too many failed attempts from this address: wait {FAILURE_WINDOW_S:.0f} s",
            )
        try:
            load_node_public_key(request.public_key)
            record = self.registry.enroll(
                token_id=request.token_id,
                secret=request.token_secret,
                public_key=request.public_key.strip(),
                fingerprint=key_fingerprint(request.public_key),
                peer=peer,
                register=self.register,
            )
        except (Refused, ValueError) as err:
            self.limiter.failed(peer)
            log.warning("enrollment from %s refused: %s", peer, err)
            if not isinstance(err, Refused):
                self.registry.log(peer=peer, name=None, outcome="refused", reason=str(err))
            context.abort(grpc.StatusCode.PERMISSION_DENIED, str(err))
        log.info("enrolled %s (%s) from %s", record.name, record.fingerprint, peer)
        return enroll_pb2.EnrollResponse(
            node_name=record.name,
            node_id=record.node_id,
            ca_certificate=self.ca_pem,
            superlink_address=self.superlink_address,
        )


def serve(
    servicer: EnrollmentServicer, *, address: str, tls: tuple[bytes, bytes] | None
) -> grpc.Server:
    """Start the service on ``address`` with TLS ``(cert chain PEM, key PEM)``, or plaintext."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    enroll_pb2_grpc.add_EnrollmentServicer_to_server(servicer, server)  # type: ignore[no-untyped-call]
    if tls is None:
        port = server.add_insecure_port(address)
    else:
        chain, key = tls
        credentials = grpc.ssl_server_credentials([(key, chain)])
        port = server.add_secure_port(address, credentials)
    if port == 0:
        raise OSError(f"the enrollment service could not listen on {address}: is it in use?")
    server.start()
    return server

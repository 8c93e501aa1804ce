"""The enrollment gRPC service (``fedlora.enroll.v1.Enrollment``), served beside the SuperLink.

A node presents a token and its public key over TLS; the service checks the token (hashed,
constant time, single use, not expired), registers the key with Flower's node authentication,
and returns the CA certificate, the Fleet API address and the node's name. A node that proves it
holds its key asks what the federation holds for it (``Challenge``, ``NodeStatus``:
server/operator/enrollment/status.py). Failed attempts are rate-limited per peer address.
Every enrollment, status answer and refusal is logged. No torch here.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass, field

import grpc

from protos.fedlora.enroll.v1 import enroll_pb2, enroll_pb2_grpc
from server.operator.enrollment.keys import parse_node_key
from server.operator.enrollment.registry import (
    NodeRecord,
    Refused,
    Register,
    Registry,
    Unregister,
)
from server.operator.enrollment.status import Nonces, status_response, verify_request

log = logging.getLogger("fedlora.enrollment")

MAX_FAILURES = 5  # per peer address and window
FAILURE_WINDOW_S = 60.0
MAX_TOKEN_FIELD = 128  # token id and secret are far shorter; anything longer is not a token
_INTERNAL = (
    "the enrollment service could not handle this request: ask the operator to look at "
    "FED/logs/enrollment.log"
)


def key_fingerprint(openssh: str) -> str:
    """``SHA256:<base64>`` of the key blob, as ``ssh-keygen -l`` prints it."""
    return parse_node_key(openssh).fingerprint


@dataclass
class _Blocked:
    since: float
    count: int


@dataclass
class RateLimiter:
    """At most ``max_failures`` failed attempts per peer host in a sliding window.

    Record-then-check: :meth:`admit` counts an attempt as failed *before* it is handled, in
    the same lock as the check, and :meth:`succeeded` takes the mark back; so however many
    attempts race, at most ``max_failures`` are handled per window. Blocked attempts are
    summarised: one report when a peer's block starts, one with the count when it ends.
    """

    max_failures: int = MAX_FAILURES
    window_s: float = FAILURE_WINDOW_S
    clock: Callable[[], float] = time.monotonic
    _failures: dict[str, deque[float]] = field(default_factory=dict)
    _blocked: dict[str, _Blocked] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def admit(self, peer: str) -> tuple[bool, str | None]:
        """``(True, None)``: handle the attempt (it counts as failed until :meth:`succeeded`).
        ``(False, report)``: refuse it; ``report`` is a line to log, or None when this block
        was reported already."""
        with self._lock:
            now = self.clock()
            recent = self._recent(peer, now)
            if len(recent) < self.max_failures:
                recent.append(now)
                return True, None
            if peer in self._blocked:
                self._blocked[peer].count += 1
                return False, None
            self._blocked[peer] = _Blocked(now, 1)
            return False, (
                f"enrollment from {peer} blocked: {self.max_failures} failed attempts within "
                f"{self.window_s:.0f} s; further attempts are counted, not logged one by one"
            )

    def succeeded(self, peer: str) -> None:
        with self._lock:
            recent = self._failures.get(peer)
            if recent:
                recent.pop()

    def flush(self, *, every: bool = False) -> list[str]:
        """Reports for blocks that ended (the peer may try again), or all with ``every``."""
        with self._lock:
            now = self.clock()
            reports = []
            for peer, block in list(self._blocked.items()):
                if every or len(self._recent(peer, now)) < self.max_failures:
                    del self._blocked[peer]
                    reports.append(
                        f"enrollment from {peer}: {block.count} attempt(s) blocked in "
                        f"{now - block.since:.0f} s"
                    )
            for peer in [p for p, q in self._failures.items() if not q]:
                del self._failures[peer]
            return reports

    def _recent(self, peer: str, now: float) -> deque[float]:
        recent = self._failures.setdefault(peer, deque())
        while recent and recent[0] <= now - self.window_s:
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
        unregister: Unregister | None = None,
        ca_pem: bytes,
        superlink_address: str,
        limiter: RateLimiter | None = None,
        nonces: Nonces | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.registry = registry
        self.register = register
        self.unregister = unregister
        self.ca_pem = ca_pem
        self.superlink_address = superlink_address
        self.limiter = limiter or RateLimiter()
        self.nonces = nonces or Nonces()
        self.clock = clock

    def _admit(self, context: grpc.ServicerContext) -> str:
        """The caller's host once the limiter admits it (counted as failed until it succeeds);
        aborts with RESOURCE_EXHAUSTED while the host is blocked."""
        peer = peer_host(context.peer())
        self.report(self.limiter.flush())
        admitted, note = self.limiter.admit(peer)
        if not admitted:
            self.report([note] if note else [])
            context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"too many failed attempts from this address: wait {FAILURE_WINDOW_S:.0f} s",
            )
        return peer

    def Challenge(
        self, request: enroll_pb2.ChallengeRequest, context: grpc.ServicerContext
    ) -> enroll_pb2.ChallengeResponse:
        peer = self._admit(context)  # a blocked address gets no nonces either
        self.limiter.succeeded(peer)
        return enroll_pb2.ChallengeResponse(nonce=self.nonces.issue())

    def NodeStatus(
        self, request: enroll_pb2.NodeStatusRequest, context: grpc.ServicerContext
    ) -> enroll_pb2.NodeStatusResponse:
        peer = self._admit(context)
        try:
            key = verify_request(request, self.nonces, now=self.clock())
            record = self.registry.node_by_key(key.openssh)
        except ValueError as err:
            log.warning("node status from %s refused: %s", peer, err)
            self.registry.log(peer=peer, name=None, outcome="refused", reason=f"status: {err}")
            context.abort(grpc.StatusCode.PERMISSION_DENIED, str(err))
            raise AssertionError("unreachable: abort raises") from None
        except Exception as err:  # a bug or a broken disk: audited, answered, still counted
            reason = f"status: {type(err).__name__}: {str(err)[:200]}"
            log.exception("node status from %s failed: %s", peer, reason)
            self.registry.log(peer=peer, name=None, outcome="error", reason=reason)
            context.abort(grpc.StatusCode.INTERNAL, _INTERNAL)
            raise AssertionError("unreachable: abort raises") from None
        self.limiter.succeeded(peer)
        reply = status_response(record)
        state = enroll_pb2.NodeStatusResponse.Status.Name(reply.status).lower()
        log.info("node status from %s: key %s %s", peer, key.fingerprint, state)
        self.registry.log(peer=peer, name=reply.node_name or None, outcome="status",
                          reason=f"key {key.fingerprint} {state}")  # fmt: skip
        return reply

    def Enroll(
        self, request: enroll_pb2.EnrollRequest, context: grpc.ServicerContext
    ) -> enroll_pb2.EnrollResponse:
        peer = self._admit(context)
        record, code, message = self._handle(request, peer)
        if record is None:
            context.abort(code, message)
            raise AssertionError("unreachable: abort raises")
        self.limiter.succeeded(peer)
        log.info("enrolled %s (%s) from %s", record.name, record.fingerprint, peer)
        return enroll_pb2.EnrollResponse(
            node_name=record.name,
            node_id=record.node_id,
            ca_certificate=self.ca_pem,
            superlink_address=self.superlink_address,
        )

    def _handle(
        self, request: enroll_pb2.EnrollRequest, peer: str
    ) -> tuple[NodeRecord | None, grpc.StatusCode, str]:
        """Enroll, or say why not; every outcome is in the audit trail (``events``)."""
        try:
            if max(len(request.token_id), len(request.token_secret)) > MAX_TOKEN_FIELD:
                raise ValueError("the token is damaged (a field is too long): paste it again")
            key = parse_node_key(request.public_key)
            record = self.registry.enroll(
                token_id=request.token_id,
                secret=request.token_secret,
                public_key=key.openssh,
                fingerprint=key.fingerprint,
                peer=peer,
                register=self.register,
                unregister=self.unregister,
            )
            return record, grpc.StatusCode.OK, ""
        except (Refused, ValueError) as err:  # Refused: the registry audited it already
            log.warning("enrollment from %s refused: %s", peer, err)
            if not isinstance(err, Refused):
                self.registry.log(peer=peer, name=None, outcome="refused", reason=str(err))
            return None, grpc.StatusCode.PERMISSION_DENIED, str(err)
        except Exception as err:  # a bug or a broken disk: audited, answered, still counted
            reason = f"{type(err).__name__}: {str(err)[:200]}"
            log.exception("enrollment from %s failed: %s", peer, reason)
            self.registry.log(peer=peer, name=None, outcome="error", reason=reason)
            return None, grpc.StatusCode.INTERNAL, _INTERNAL

    def report(self, lines: list[str]) -> None:
        """Log and audit limiter reports: one line per address per block."""
        for line in lines:
            log.warning("%s", line)
            self.registry.log(peer="limiter", name=None, outcome="blocked", reason=line)


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

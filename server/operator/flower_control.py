"""Flower's own node authentication and run status, through the SuperLink's Control API.

fedlora never keeps a second list of who may connect: keys are registered, listed and
unregistered with ``RegisterNode`` / ``ListNodes`` / ``UnregisterNode`` on the SuperLink.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from server.operator.enrollment.keys import fingerprint_of_pem, parse_node_key

if TYPE_CHECKING:  # Flower's Control client is imported when a call is made: every `fedlora`
    # command builds its parser from modules that name ControlAddress, and most never call.
    import httpx
    from flwr.supercore.control import ControlHttpClient
    from flwr.supercore.protobuf.client import ProtobufCall, ProtobufRequestContext


@dataclass(frozen=True)
class ControlAddress:
    """How to reach the SuperLink's Control API: TLS with the federation's CA, and the
    operator's bearer token (``FED/operator.token``) on every request."""

    address: str
    ca_cert: Path | None  # None: plaintext (`--insecure`)
    token: str = field(default="", repr=False)


@dataclass(frozen=True)
class _Bearer:
    """Flower protobuf-over-HTTP client interceptor: add the operator's token."""

    token: str = field(repr=False)

    def intercept(self, context: ProtobufRequestContext, call_next: ProtobufCall) -> httpx.Response:
        context.request.headers["Authorization"] = f"Bearer {self.token}"
        return call_next(context)


@dataclass(frozen=True)
class FlowerNode:
    node_id: int
    name: str
    status: str  # Flower's: registered, online, offline, unregistered
    fingerprint: str = "?"  # of the registered public key (OpenSSH SHA256)
    last_seen: str = ""  # Flower's last activation time (ISO 8601), empty if never


def load_node_public_key(openssh: str) -> ec.EllipticCurvePublicKey:
    """Parse an OpenSSH ``ecdsa-sha2-nistp384`` public key; raise naming the problem."""
    return parse_node_key(openssh).key


@contextmanager
def control_client(control: ControlAddress) -> Iterator[ControlHttpClient]:
    from flwr.supercore.control import ControlHttpClient
    from flwr.supercore.interceptors import RuntimeVersionHttpInterceptor

    root = control.ca_cert.read_bytes() if control.ca_cert is not None else None
    client = ControlHttpClient.from_server_address(
        server_address=control.address,
        insecure=control.ca_cert is None,
        root_certificates=root,
        interceptors=[
            RuntimeVersionHttpInterceptor(component_name="fedlora"),
            *([_Bearer(control.token)] if control.token else []),
        ],
    )
    try:
        yield client
    finally:
        client.close()


class ControlRefused(RuntimeError):
    """The SuperLink answered a Control API call with an error; the message says which."""


def _refused(err: Exception, action: str) -> ControlRefused:
    """Flower's HTTP error as one readable sentence (no URL, no stack)."""
    import httpx

    if not isinstance(err, httpx.HTTPStatusError):
        return ControlRefused(f"could not reach the SuperLink to {action} ({type(err).__name__})")
    code = err.response.status_code
    if code == 412 and action.startswith("register"):
        return ControlRefused(
            "this public key is already registered with the federation: every node needs its "
            "own key pair; join from a fresh `--dir` so `fedlora node join` makes a new one"
        )
    if code == 401:
        return ControlRefused(f"the SuperLink refused to {action}: not the operator's token")
    try:
        body = err.response.json()
    except ValueError:
        body = None
    detail = (
        str(body.get("message") or body.get("detail") or "")
        if isinstance(body, dict)
        else err.response.text
    )
    return ControlRefused(f"the SuperLink refused to {action} (HTTP {code}: {detail[:200]})")


def register_node(control: ControlAddress, *, name: str, public_key: str) -> int:
    """Register an OpenSSH public key with the SuperLink; return Flower's node id."""
    import httpx
    from flwr.proto.control_pb2 import RegisterNodeRequest

    pem = load_node_public_key(public_key).public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    try:
        with control_client(control) as client:
            response = client.RegisterNode(RegisterNodeRequest(public_key=pem, name=name))
    except httpx.HTTPError as err:
        raise _refused(err, "register the node's key") from None
    if not response.node_id:
        raise RuntimeError("the SuperLink did not register the key")
    return int(response.node_id)


def unregister_node(control: ControlAddress, node_id: int) -> None:
    from flwr.proto.control_pb2 import UnregisterNodeRequest

    with control_client(control) as client:
        client.UnregisterNode(UnregisterNodeRequest(node_id=node_id))


def list_nodes(control: ControlAddress) -> list[FlowerNode]:
    from flwr.proto.control_pb2 import ListNodesRequest

    with control_client(control) as client:
        response = client.ListNodes(ListNodesRequest())
    return [
        FlowerNode(
            int(n.node_id),
            str(n.name),
            str(n.status),
            last_seen=str(n.last_activated_at or ""),
            fingerprint=fingerprint_of_pem(bytes(n.public_key)),
        )
        for n in response.nodes_info
    ]


@dataclass(frozen=True)
class RunStatus:
    status: str  # pending, starting, running, finished
    sub_status: str  # completed, failed, stopped (when finished)
    details: str


def run_status(control: ControlAddress, run_id: int) -> RunStatus:
    """The SuperLink's view of one run."""
    from flwr.proto.control_pb2 import ListRunsRequest

    with control_client(control) as client:
        response = client.ListRuns(ListRunsRequest(run_id=run_id))
    if run_id not in response.run_dict:
        raise LookupError(f"the SuperLink knows no run {run_id}")
    status = response.run_dict[run_id].status
    return RunStatus(str(status.status), str(status.sub_status), str(status.details))

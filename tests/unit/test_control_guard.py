"""The operator-only guard in front of Flower's HTTP app, and where the Control API may listen."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from server.operator.commands import check_control_host
from server.operator.control_guard import OperatorOnly, ensure_secret, token_digest

TOKEN = "s3cret-token"


def _call(path: str, headers: list[tuple[bytes, bytes]], kind: str = "http") -> tuple[int, bool]:
    reached: list[bool] = []
    sent: list[dict[str, Any]] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        reached.append(True)
        await send({"type": "http.response.start", "status": 200, "headers": []})

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b""}

    async def send(message: Any) -> None:
        sent.append(dict(message))

    guard = OperatorOnly(app, digest=token_digest(TOKEN))
    scope = {"type": kind, "path": path, "headers": headers}
    asyncio.run(guard(scope, receive, send))
    status = next((m.get("status", 0) for m in sent if "status" in m), 0)
    return int(status), bool(reached)


@pytest.mark.parametrize(
    "headers",
    [
        [],
        [(b"authorization", b"Bearer wrong")],
        [(b"authorization", b"Basic " + TOKEN.encode())],
        [(b"authorization", b"Bearer " + TOKEN.encode())] * 2,  # two headers: ambiguous
        [(b"authorization", b"Bearer ")],
    ],
)
def test_control_routes_need_the_operator_token(headers: list[tuple[bytes, bytes]]) -> None:
    for path in ("/v1/control/register-node", "/v1/control/start-run", "/docs", "/"):
        assert _call(path, headers) == (401, False)


def test_the_token_opens_every_route_and_runtime_stays_flowers() -> None:
    good = [(b"Authorization", b"Bearer " + TOKEN.encode())]
    assert _call("/v1/control/list-nodes", good) == (200, True)
    assert _call("/v1/control/list-nodes", [(b"authorization", b"bearer " + TOKEN.encode())])[1]
    # Flower authenticates the Runtime API itself (HMAC for SuperExec, task tokens).
    assert _call("/v1/runtime/pull-messages", []) == (200, True)
    assert _call("/health", []) == (200, True)
    assert _call("/v1/runtimeX", []) == (401, False)


def test_websocket_without_token_is_closed() -> None:
    assert _call("/v1/control/stream-logs", [], kind="websocket") == (0, False)


def test_lifespan_passes_through() -> None:
    assert _call("", [], kind="lifespan")[1]


def test_secret_is_created_private_once(tmp_path: Path) -> None:
    path = tmp_path / "operator.token"
    first = ensure_secret(path)
    assert len(first) >= 40 and path.stat().st_mode & 0o777 == 0o600
    assert ensure_secret(path) == first


@pytest.mark.parametrize("host", ["0.0.0.0", "10.0.0.5", "::", "server.example"])
def test_network_control_host_needs_tls(host: str) -> None:
    with pytest.raises(ValueError, match=r"`--control-host`.*--insecure"):
        check_control_host(host, insecure=True)
    check_control_host(host, insecure=False)  # TLS + operator token


@pytest.mark.parametrize("host", ["127.0.0.1", "::1", "localhost", "127.0.0.2"])
def test_loopback_control_host_is_fine_even_insecure(host: str) -> None:
    check_control_host(host, insecure=True)


def test_superlink_is_guarded_and_superexec_signs_its_calls(tmp_path: Path) -> None:
    from server.operator.commands import superexec_argv, superlink_argv
    from server.operator.federation_dir import FederationDir, init_federation

    config = init_federation(tmp_path / "fed", ["fed.example.org"])
    fed = FederationDir(tmp_path / "fed")
    link = " ".join(superlink_argv(fed, config, "0.0.0.0"))
    assert f"-m server.operator.superlink_main --token-file {fed.operator_token} --" in link
    assert f"--isolation process --superexec-auth-secret-file {fed.superexec_secret}" in link
    execs = " ".join(superexec_argv(fed, config, 4242))
    assert f"--runtime-api-address 127.0.0.1:{config.control_port}" in execs
    assert f"--root-certificates {fed.pki.ca_cert}" in execs and "--parent-pid 4242" in execs
    assert f"--superexec-auth-secret-file {fed.superexec_secret}" in execs

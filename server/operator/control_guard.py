"""Only the operator may use the SuperLink's Control API.

Flower 1.39 serves its Control API (register/unregister node keys, list nodes, start and stop
runs) over HTTP with no authentication in this distribution: on the server machine, any local
user reaching the port could use it. fedlora puts :class:`OperatorOnly` in front of Flower's
HTTP app (in the same process, see ``server/operator/superlink_main.py``): every request needs
``Authorization: Bearer <operator token>``, where the token lives in ``FED/operator.token``
(0600 inside the 0700 federation folder), except Flower's Runtime API (``/v1/runtime/…``, which
Flower authenticates itself: the SuperExec routes with the HMAC secret in
``FED/superexec.secret``, every other route with a per-task token) and ``/health``.

The comparison is in constant time against the SHA-256 of the token; the token is never logged.
No Flower, no torch: pure ASGI.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any

from common.files import write_private

OPERATOR_TOKEN = "operator.token"
SUPEREXEC_SECRET = "superexec.secret"
OPEN_PREFIXES = ("/v1/runtime/",)  # Flower authenticates these itself
OPEN_PATHS = frozenset({"/health"})

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
Asgi = Callable[[Scope, Receive, Send], Awaitable[None]]

REFUSAL = (
    "the SuperLink's Control API answers only the federation's operator: send "
    "`Authorization: Bearer <token>` with the token from FED/operator.token "
    "(fedlora's operator commands do this for the owner of FED)"
)


def ensure_secret(path: Path) -> str:
    """Return the secret in ``path``, creating it (0600, 32 random bytes) when missing."""
    try:
        write_private(path, secrets.token_urlsafe(32).encode())
    except FileExistsError:  # the usual case; or another command created it just now
        pass
    except PermissionError:
        raise PermissionError(_not_owner(path)) from None
    return read_secret(path)


def _not_owner(path: Path) -> str:
    return (
        f"cannot read {path}: only the federation's operator (the owner of the federation "
        "folder) may control it; run this command as that user"
    )


def read_secret(path: Path) -> str:
    """The secret in ``path``; a clear error when this user may not read it."""
    try:
        text = path.read_text().strip()
    except PermissionError:
        raise PermissionError(_not_owner(path)) from None
    if not text:
        raise ValueError(f"{path} is empty: delete it and run `fedlora server start` again")
    return text


def token_digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def is_open(path: str) -> bool:
    """Paths Flower authenticates itself (Runtime API) or that reveal nothing (health)."""
    return path in OPEN_PATHS or path.startswith(OPEN_PREFIXES)


def bearer_matches(headers: list[tuple[bytes, bytes]], digest: bytes) -> bool:
    """Exactly one ``Authorization: Bearer <token>`` whose SHA-256 equals ``digest``."""
    values = [v for k, v in headers if k.lower() == b"authorization"]
    if len(values) != 1:
        return False
    scheme, _, token = values[0].decode("latin-1").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return False
    return hmac.compare_digest(token_digest(token.strip()), digest)


class OperatorOnly:
    """ASGI middleware: refuse (401) every request without the operator's bearer token,
    except :func:`is_open` paths. Lifespan events pass through untouched."""

    def __init__(self, app: Asgi, *, digest: bytes) -> None:
        self.app = app
        self.digest = digest

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope.get("type")
        if kind not in ("http", "websocket") or is_open(str(scope.get("path", ""))):
            await self.app(scope, receive, send)
            return
        if bearer_matches(list(scope.get("headers", [])), self.digest):
            await self.app(scope, receive, send)
            return
        if kind == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return
        body = json.dumps({"code": "OPERATOR_ONLY", "message": REFUSAL}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 401,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    # Not the bare "Bearer" that makes Flower's CLI try an OIDC token refresh.
                    (b"www-authenticate", b'Bearer realm="fedlora operator"'),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})

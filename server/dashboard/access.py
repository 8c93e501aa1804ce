"""Who may see the dashboard: the holder of the access token in ``FED/dashboard.json`` (0600).

``fedlora server start`` makes a fresh token each time it starts (the Jupyter pattern: other users
of the same host reach loopback too, so loopback alone is no credential);
``fedlora server dashboard`` prints the ready URL from the same file.
"""

from __future__ import annotations

import hmac
import json
import secrets
from dataclasses import asdict, dataclass
from pathlib import Path
from urllib.parse import quote

from common.files import write_atomic

ACCESS_FILE = "dashboard.json"
DASHBOARD_PORT = 9095
LOOPBACK = ("127.0.0.1", "::1", "localhost")


@dataclass(frozen=True)
class Access:
    """Where the dashboard listens and the token every request must carry."""

    host: str
    port: int
    token: str

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/?token={quote(self.token)}"


def new_access(fed_root: Path, *, port: int, host: str = "127.0.0.1") -> Access:
    """Make a fresh token and write ``FED/dashboard.json`` (0600: only FED's owner reads it)."""
    if host not in LOOPBACK:
        raise ValueError(
            f"`--dashboard-host` is {host!r}: the dashboard listens on loopback only; reach it "
            "from another machine through an SSH tunnel (docs/dashboard.md)"
        )
    if not 1 <= port <= 65535:
        raise ValueError(f"`--dashboard-port` is {port}: use 1-65535, or 0 to turn it off")
    access = Access(host=host, port=port, token=secrets.token_urlsafe(32))
    write_atomic(fed_root / ACCESS_FILE, json.dumps(asdict(access)).encode())  # mkstemp: 0600
    return access


def load_access(fed_root: Path) -> Access:
    """Read ``FED/dashboard.json``; a clear error when the server never started a dashboard."""
    path = fed_root / ACCESS_FILE
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        return Access(host=str(raw["host"]), port=int(raw["port"]), token=str(raw["token"]))
    except FileNotFoundError:
        raise FileNotFoundError(
            f"`--dir` {str(fed_root)!r} has no {ACCESS_FILE}: start the server with "
            f"`fedlora server start --dir {fed_root}` (its dashboard is on by default)"
        ) from None
    except (KeyError, ValueError, TypeError) as err:
        raise ValueError(
            f"{path} is malformed ({err}): restart `fedlora server start` to write a fresh one"
        ) from None


def token_matches(given: str | None, expected: str) -> bool:
    """Constant-time comparison; a missing token never matches."""
    return given is not None and hmac.compare_digest(given.encode(), expected.encode())

"""What the dashboard shows, gathered from the federation folder and Flower's Control API.

Nodes come from the enrollment registry joined with Flower's view (online, last seen); runs are
the run folders under ``FED/runs``. Nothing here writes or changes the federation.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from server.operator.federation_dir import FederationDir
from server.operator.flower_control import FlowerNode, list_nodes
from server.report.view import ADAPTER_DIR, RunView, run_folders, run_view
from server.run.runlog import METRICS_FILE


@dataclass(frozen=True)
class NodeRow:
    """One enrolled node as the operator sees it."""

    name: str
    status: str  # enrolled | online | revoked
    enrolled_at: str
    last_seen: str
    fingerprint: str


def _utc(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%d %H:%M:%S")


def _seen(iso: str) -> str:
    """Flower's ISO 8601 time as ``YYYY-MM-DD HH:MM:SS`` UTC; "—" when never seen."""
    try:
        return _utc(datetime.fromisoformat(iso).timestamp()) if iso else "—"
    except ValueError:
        return iso[:19] or "—"


def flower_nodes(fed: FederationDir) -> tuple[dict[int, FlowerNode], str | None]:
    """Flower's nodes by id, or ``({}, why)`` when the Control API cannot be asked."""
    try:
        nodes = list_nodes(fed.control(fed.load()))
    except Exception as err:  # the SuperLink is down or refuses: say so, show the rest
        return {}, f"online status unknown: Flower's Control API did not answer ({err})"[:300]
    return {n.node_id: n for n in nodes}, None


def node_rows(fed: FederationDir, flower: dict[int, FlowerNode]) -> list[NodeRow]:
    """The registry's nodes with Flower's status folded in."""
    rows = []
    for record in fed.registry().nodes():
        seen = flower.get(record.node_id)
        status = record.status
        if status == "enrolled" and seen is not None and seen.status == "online":
            status = "online"
        rows.append(
            NodeRow(
                name=record.name,
                status=status,
                enrolled_at=_utc(record.enrolled_at),
                last_seen=_seen(seen.last_seen if seen is not None else ""),
                fingerprint=record.fingerprint,
            )
        )
    return rows


# Run folder -> (its files' signature, its view): the page reloads every few seconds, and a
# folder whose records did not change is not read and parsed again.
_VIEWS: dict[Path, tuple[tuple[int, int, bool, int], RunView]] = {}


def _signature(path: Path) -> tuple[int, int, bool, int]:
    metrics = path / METRICS_FILE
    stat = metrics.stat() if metrics.is_file() else None
    return (
        stat.st_mtime_ns if stat else 0,
        stat.st_size if stat else 0,
        (path / ADAPTER_DIR).is_dir(),
        int(time.time() // 60),  # "running" turns "interrupted" with time alone
    )


def _view(path: Path) -> RunView:
    signature = _signature(path)
    cached = _VIEWS.get(path)
    if cached is None or cached[0] != signature:
        cached = (signature, run_view(path))
        _VIEWS[path] = cached
    return cached[1]


def runs(fed: FederationDir, *, limit: int = 20) -> list[RunView]:
    """The newest ``limit`` runs under ``FED/runs``, newest first."""
    return [_view(path) for path in run_folders(fed.runs)[:limit]]


def find_run(fed: FederationDir, run_id: str) -> Path | None:
    """The run folder named ``run_id`` exactly (never a path built from the request)."""
    return next((p for p in run_folders(fed.runs) if p.name == run_id), None)

"""Who may join and who is in: fedlora's registry reconciled with Flower's own list of
registered keys (``server nodes``), and pending invitations (``server invitations``).

Pure formatting over records: no network, no Flower import.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from server.operator.enrollment.registry import ENROLLED, Invitation, NodeRecord
from server.operator.flower_control import FlowerNode

UNREGISTERED = "unregistered"  # enrolled here, but Flower no longer accepts the key


@dataclass(frozen=True)
class Reconciled:
    rows: list[tuple[NodeRecord, str]]  # each record with the status to show
    strangers: list[FlowerNode]  # keys Flower accepts that fedlora did not enroll


def reconcile(records: Sequence[NodeRecord], flower: Sequence[FlowerNode] | None) -> Reconciled:
    """Join the registry with Flower's nodes by node id (``flower`` None: not reachable).

    An enrolled record shows Flower's ``online``, or ``unregistered`` when Flower no longer
    holds its key as registered; a Flower node fedlora never enrolled is a stranger.
    """
    if flower is None:
        return Reconciled([(r, r.status) for r in records], [])
    by_id = {n.node_id: n for n in flower}
    rows = []
    for record in records:
        node = by_id.get(record.node_id)
        status = record.status
        if status == ENROLLED and (node is None or node.status == UNREGISTERED):
            status = UNREGISTERED
        elif status == ENROLLED and node is not None and node.status == "online":
            status = "online"
        rows.append((record, status))
    ours = {r.node_id for r in records}
    strangers = [n for n in flower if n.node_id not in ours and n.status != UNREGISTERED]
    return Reconciled(rows, strangers)


def node_lines(view: Reconciled, root: str) -> list[str]:
    """The table of ``server nodes``, then a warning per key fedlora did not enroll."""
    width = max([len(r.name) for r, _ in view.rows] + [4])
    lines = [f"{'name':<{width}}  {'enrolled at (UTC)':<19}  {'status':<9}  key fingerprint"]
    for record, status in view.rows:
        lines.append(
            f"{record.name:<{width}}  {_utc(record.enrolled_at)}  {status:<9}  {record.fingerprint}"
        )
    if not view.rows:
        lines.append("(no nodes enrolled yet: `fedlora server invite --dir FED --name NAME`)")
    for record, status in view.rows:
        if status == UNREGISTERED:
            lines.append(
                f"NOTE: {record.name} is enrolled but Flower no longer accepts its key: "
                f"`fedlora server revoke --dir {root} {record.name}` records that"
            )
    for node in view.strangers:
        lines.append(
            f"WARNING: Flower accepts node {node.node_id} ({node.name or 'no name'}, "
            f"{node.status}, key {node.fingerprint}) that fedlora did not enroll; remove it "
            f"with `FLWR_HOME={root}/flower flwr supernode unregister {node.node_id} fedlora`"
        )
    return lines


def invitation_lines(pending: Sequence[Invitation], *, now: float | None = None) -> list[str]:
    """The table of ``server invitations``."""
    now = time.time() if now is None else now
    if not pending:
        return ["(no pending invitations: `fedlora server invite --dir FED --name NAME`)"]
    width = max([len(i.name) for i in pending] + [4])
    lines = [f"{'name':<{width}}  {'created (UTC)':<19}  {'expires in':<10}  token id"]
    for inv in pending:
        left = max(0, int(inv.expires_at - now))
        lines.append(
            f"{inv.name:<{width}}  {_utc(inv.created_at)}  {_duration(left):<10}  {inv.token_id}"
        )
    return lines


def _utc(when: float) -> str:
    return datetime.fromtimestamp(when, UTC).strftime("%Y-%m-%d %H:%M:%S")


def _duration(seconds: int) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f}{unit}"
    return f"{seconds}s"

"""The node log's record of each message: round, kind, and where its seconds went.

One line per message, e.g. ``[fedlora] round 2 train: 3.4 s (load 0.0, apply 0.1,
train 2.9, other 0.4)``: ``load`` is reading the base model (0 when the worker's cache has it),
``apply`` applying the global adapter, ``train`` the local training the reply reports, ``eval``
scoring (with reading and encoding the node's data), ``other`` the rest (data, privacy
bookkeeping, packing the reply). Torch-free.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from flwr.app import Message

from client.model import phases
from strategies import protocol as p

# Flower's message types (flwr.app.message_type): what the server asked of the node.
TRAIN, EVALUATE = "train", "evaluate"


@dataclass
class MessageRecord:
    """One message handled by the node: what it was and where its time went."""

    round: str
    kind: str
    started: float = field(default_factory=time.perf_counter)
    seconds: float = 0.0
    spent: dict[str, float] = field(default_factory=dict)
    reply: Message | None = None

    def split(self) -> dict[str, float]:
        """Seconds per phase; the phases add up to :attr:`seconds`."""
        parts = {"load": self.spent.get("load", 0.0), "apply": self.spent.get("apply", 0.0)}
        rest = self.seconds - sum(parts.values())
        reported = _train_seconds(self.reply) if self.kind == TRAIN else None
        if reported is not None:
            parts["train"] = reported
            rest -= reported
        elif self.kind == EVALUATE and not _is_error(self.reply):
            parts["eval"], rest = rest, 0.0
        parts["other"] = max(rest, 0.0)
        return parts

    def line(self) -> str:
        parts = ", ".join(f"{k} {v:.2f}" for k, v in self.split().items())
        failed = " (error reply)" if _is_error(self.reply) else ""
        return f"[fedlora] round {self.round} {self.kind}: {self.seconds:.2f} s ({parts}){failed}"


def _is_error(reply: Message | None) -> bool:
    return reply is None or reply.has_error()


def _train_seconds(reply: Message | None) -> float | None:
    if _is_error(reply) or reply is None:
        return None
    metrics = reply.content.metric_records.get(p.METRICS)
    value = metrics.get(p.TRAIN_SECONDS) if metrics is not None else None
    return float(value) if isinstance(value, int | float) else None


@contextmanager
def timed_message(message: Message) -> Iterator[MessageRecord]:
    """Time the handling of ``message``; set ``record.reply`` inside the block."""
    kind = message.metadata.message_type.split(".")[0]
    record = MessageRecord(round=message.metadata.group_id or "-", kind=kind)
    phases.take()  # nothing left over from before this message
    try:
        yield record
    finally:
        record.seconds = time.perf_counter() - record.started
        record.spent = phases.take()

"""What ``fedlora simulate`` shows while a round runs: a live bar on a terminal, plain lines
otherwise (tests, pipes, log files).

Both print a line per node as its train reply arrives while a round sends at most
:data:`PER_NODE_LINES` instructions — ``[fedlora]   cardiology-4: rank 4, train loss 2.345,
1.2 s``. Above that, the per-node figures are left to ``metrics.jsonl`` and the round's one
progress line (server/run/progress.py): the live bar counts the replies, and plain output prints
``[fedlora]   round 3 train: 250/1000 replies (2 failed), 12 s`` at each quarter.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from flwr.app import Message
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from server.run.privacy_summary import epsilon_note
from server.run.progress import LINE_CHARS, PREFIX
from strategies import protocol as p

PER_NODE_LINES = 12
QUARTERS = (0.25, 0.5, 0.75)


def reply_line(msg: Message, reply: Message) -> str:
    """``[fedlora]   NAME: rank R, train loss L, S s[, ε ...]`` or ``... node ID failed: ...``."""
    if reply.has_error():
        reason = reply.error.reason.splitlines()[0] if reply.error.reason else "?"
        line = f"{PREFIX}   node {msg.metadata.dst_node_id} failed: {reason}"
        return line if len(line) <= LINE_CHARS else line[: LINE_CHARS - 1] + "…"
    adapter: Mapping[str, Any] = reply.content.config_records.get(p.ADAPTER, {})
    metrics: Mapping[str, Any] = reply.content.metric_records.get(p.METRICS, {})
    name, rank = adapter.get(p.NODE_NAME, "?"), adapter.get(p.RANK, "?")
    loss, seconds = metrics.get(p.TRAIN_LOSS), metrics.get(p.TRAIN_SECONDS)
    shown = f"{loss:.3f}" if isinstance(loss, float) else "—"  # absent under DP modes
    took = f", {seconds:.1f} s" if isinstance(seconds, float) else ""
    return f"{PREFIX}   {name!s}: rank {rank!s}, train loss {shown}{took}{epsilon_note(metrics)}"


class PlainProgress:
    """Plain lines through ``echo``: per node for small rounds, per quarter for large ones."""

    def __init__(self, echo: Callable[[str], None] = print) -> None:
        self.echo = echo
        self.kind, self.round, self.total, self.done, self.failed = "", "", 0, 0, 0
        self.started = time.perf_counter()

    def pushed(self, messages: Sequence[Message]) -> None:
        """A batch of instructions went out (one round's train or evaluate, or a retry)."""
        if not messages:
            return
        meta = messages[0].metadata
        self.kind, self.round = meta.message_type, meta.group_id
        self.total, self.done, self.failed = len(messages), 0, 0
        self.started = time.perf_counter()

    def replied(self, msg: Message, reply: Message) -> None:
        """One node's reply arrived."""
        self.done += 1
        self.failed += reply.has_error()
        if self.total <= PER_NODE_LINES:
            if msg.metadata.message_type == "train":
                self.echo(reply_line(msg, reply))
        elif any(self.done == int(q * self.total) for q in QUARTERS):
            self.echo(self.tally())

    def tally(self) -> str:
        """``[fedlora]   round 3 train: 250/1000 replies (2 failed), 12 s``."""
        failed = f" ({self.failed} failed)" if self.failed else ""
        seconds = time.perf_counter() - self.started
        return (f"{PREFIX}   round {self.round} {self.kind}: {self.done}/{self.total} replies"
                f"{failed}, {seconds:.0f} s")  # fmt: skip

    def close(self) -> None:
        """Nothing to end for plain lines."""


class LiveProgress(PlainProgress):
    """A live bar (rich) for the round's replies; lines print above it through ``echo``."""

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console()
        self.bar = Progress(
            TextColumn(PREFIX + " {task.description}", markup=False),  # "[fedlora]" is no tag
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=self.console,
            transient=True,
        )
        self.task: Any = None
        super().__init__(echo=self._print)
        self.bar.start()

    def _print(self, line: str) -> None:
        self.console.print(line, markup=False, highlight=False, soft_wrap=True)

    def pushed(self, messages: Sequence[Message]) -> None:
        super().pushed(messages)
        if self.task is not None:
            self.bar.remove_task(self.task)
            self.task = None
        if messages:
            self.task = self.bar.add_task(f"round {self.round} {self.kind}", total=self.total)

    def replied(self, msg: Message, reply: Message) -> None:
        if self.total <= PER_NODE_LINES and msg.metadata.message_type == "train":
            self.echo(reply_line(msg, reply))
        self.done += 1
        self.failed += reply.has_error()
        if self.task is not None:
            failed = f", {self.failed} failed" if self.failed else ""
            self.bar.update(self.task, completed=self.done,
                            description=f"round {self.round} {self.kind}{failed}")  # fmt: skip
            if self.done >= self.total:
                self.bar.remove_task(self.task)
                self.task = None
                self.bar.refresh()  # lines printed next must not redraw the last frame's bar

    def close(self) -> None:
        """Stop the bar (and its refresh thread)."""
        self.bar.stop()

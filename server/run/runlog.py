"""The run directory: `metrics.jsonl` (one record per round), progress lines, summary table."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from server.run.privacy_summary import decline_notes, epsilon_column
from server.run.progress import refusal_lines, round_line

METRICS_FILE = "metrics.jsonl"
# The end-of-run summary names at most this many nodes, and this many nodes no longer used.
SUMMARY_NODES = 24
SUMMARY_DECLINES = 5


def new_run_dir(root: Path) -> Path:
    """``root/<UTC timestamp>``, made unique with a counter if needed."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    for i in range(1000):
        path = root / (stamp if i == 0 else f"{stamp}-{i}")
        try:
            path.mkdir(parents=True, exist_ok=False)
        except FileExistsError:
            continue
        return path
    raise RuntimeError(f"could not create a fresh run folder under {root}")


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """The records of ``metrics.jsonl``, in round order; none if there is no file yet. A line cut
    short (a crash, or a reader racing the writer) is skipped, not an error."""
    path = run_dir / METRICS_FILE
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and isinstance(record.get("round"), int):
            records.append(record)
    return records


def _fmt(value: float | None) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{value:.3f}"


@dataclass
class RunLog:
    """Appends one JSON record per round and prints one progress line per round."""

    run_dir: Path
    num_rounds: int
    echo: Callable[[str], None] = print
    started: float = field(default_factory=time.perf_counter)
    records: list[dict[str, Any]] = field(default_factory=list)
    last: float = field(init=False, default=0.0)  # when the last record was written

    def __post_init__(self) -> None:
        self.last = self.started

    def write(self, record: dict[str, Any]) -> None:
        """Append ``record`` (with ``elapsed_s`` since the start and ``round_s`` since the last
        record) to ``metrics.jsonl``; echo its progress line and the first refusals."""
        now = time.perf_counter()
        record = {**record, "elapsed_s": round(now - self.started, 3),
                  "round_s": round(now - self.last, 3)}  # fmt: skip
        self.last = now
        self.records.append(record)
        with (self.run_dir / METRICS_FILE).open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(record, sort_keys=True) + "\n")
        self.echo(self.progress_line(record))
        for line in refusal_lines(record):
            self.echo(line)

    def progress_line(self, record: dict[str, Any]) -> str:
        """One line, at most ``LINE_CHARS`` characters at any number of nodes."""
        return round_line(record, num_rounds=self.num_rounds)

    def summary_table(self) -> str:
        """Per node: rank, eval loss before the first and after the last round; the first
        ``SUMMARY_NODES`` nodes by name and ``SUMMARY_DECLINES`` nodes no longer used, then a
        count of the rest (metrics.jsonl has them all)."""
        if not self.records:
            return "(no rounds recorded)"
        first, last = self.records[0], self.records[-1]
        names = sorted(set(first.get("nodes", {})) | set(last.get("nodes", {})))
        ranks = {n: r for rec in self.records for n, e in rec.get("nodes", {}).items()
                 if (r := e.get("rank")) is not None}  # fmt: skip
        width = max([len(n) for n in names] + [4])
        eps = epsilon_column(self.records)  # empty unless some node ran with privacy
        lines = [f"{'node':<{width}}  rank  eval loss r0  eval loss r{last['round']}  change"
                 + ("  ε spent" if eps else "")]  # fmt: skip
        for name in names[:SUMMARY_NODES]:
            before = first.get("nodes", {}).get(name, {}).get("eval_loss")
            after = last.get("nodes", {}).get(name, {}).get("eval_loss")
            change = "-" if before is None or after is None else f"{after - before:+.3f}"
            rank = ranks.get(name, "-")
            lines.append(
                f"{name:<{width}}  {rank!s:>4}  {_fmt(before):>12}  {_fmt(after):>12}  {change:>6}"
                + (f"  {eps.get(name, '-')}" if eps else "")
            )
        if len(names) > SUMMARY_NODES:
            lines.append(f"… and {len(names) - SUMMARY_NODES} more nodes, see {METRICS_FILE}")
        total_up = sum(rec.get("bytes_up", 0) for rec in self.records)
        total_down = sum(rec.get("bytes_down", 0) for rec in self.records)
        lines.append(
            f"global rank {last.get('global_rank', 0)}; LoRA factors up {total_up / 1e6:.2f} MB, "
            f"down {total_down / 1e6:.2f} MB; {last['elapsed_s']:.0f} s"
        )
        notes = decline_notes(self.records)
        lines.extend(notes[:SUMMARY_DECLINES])
        if len(notes) > SUMMARY_DECLINES:
            lines.append(f"… and {len(notes) - SUMMARY_DECLINES} more nodes not used, see "
                         f"{METRICS_FILE}")  # fmt: skip
        return "\n".join(lines)

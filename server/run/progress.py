"""The per-round progress lines: one line a round, whatever the number of nodes.

``[fedlora] round 3/10 | 100 sampled, 98 used, 2 refused | eval loss min/med/max
2.101/2.345/2.890 | rank 64, trunc err 1.2e-03 | up 812 kB | 4.2 s`` (one line), then at most
:data:`REFUSALS_SHOWN` lines naming refused nodes and one "… and K more, see metrics.jsonl".
Every per-node figure stays in ``metrics.jsonl``. Round 0 (the base model) is evaluation only:
``[fedlora] round 0/10 | 100 evaluated | eval loss min/med/max ... | 3.2 s``.

Counts: *sampled* — nodes sent a train instruction this round (every attempt); *used* — nodes
whose train reply went into the aggregate; *refused* — nodes whose reply (train or evaluation)
was not used. Eval losses are over the nodes that evaluated this round (``fraction-evaluate``).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

PREFIX = "[fedlora]"
LINE_CHARS = 150  # no progress line is longer (tests/unit/test_progress.py)
REFUSALS_SHOWN = 3


@dataclass(frozen=True)
class RoundCounts:
    """How many nodes a round sampled, used and refused, and their eval losses."""

    sampled: int
    used: int
    refused: int
    eval_losses: tuple[float, ...]


def round_counts(record: Mapping[str, Any]) -> RoundCounts:
    """The counts of one ``metrics.jsonl`` record (records without ``sampled``, from before it
    was written, count the nodes that replied to training)."""
    nodes: Mapping[str, Mapping[str, Any]] = record.get("nodes", {})
    used = sum(1 for e in nodes.values() if e.get("rank") is not None)
    refused = sum(1 for e in nodes.values() if e.get("rejected"))
    losses = tuple(
        float(loss)
        for e in nodes.values()
        if isinstance(loss := e.get("eval_loss"), int | float) and math.isfinite(loss)
    )
    sampled = record.get("sampled")
    return RoundCounts(
        sampled=int(sampled) if isinstance(sampled, int) else used + refused,
        used=used,
        refused=refused,
        eval_losses=losses,
    )


def loss_text(value: float) -> str:
    """A loss in at most 5 characters: 3 decimals below 10, fewer above."""
    if not math.isfinite(value):
        return "-"
    digits = 3 if abs(value) < 10 else 2 if abs(value) < 100 else 1 if abs(value) < 1000 else 0
    return f"{value:.{digits}f}"


def loss_summary(losses: Sequence[float]) -> str:
    """``"min/med/max 2.101/2.345/2.890"`` (the median of an even count is the mean of the two
    middle values), or ``"-"`` when no node evaluated."""
    if not losses:
        return "-"
    stats = (min(losses), statistics.median(losses), max(losses))
    return "min/med/max " + "/".join(loss_text(v) for v in stats)


def bytes_text(count: float) -> str:
    """``812 B``, ``1.23 kB``, ``45.6 MB``, ``789 GB``: three significant digits, decimal units."""
    value = float(count)
    for unit in ("B", "kB", "MB", "GB"):
        if abs(value) < 999.5 or unit == "GB":
            break
        value /= 1000
    if unit == "B":
        return f"{value:.0f} B"
    digits = 2 if abs(value) < 9.995 else 1 if abs(value) < 99.95 else 0
    return f"{value:.{digits}f} {unit}"


def seconds_text(seconds: float) -> str:
    """``4.2 s``, ``123 s``, ``17 min``."""
    if seconds < 9.95:
        return f"{seconds:.1f} s"
    if seconds < 999.5:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min"


def error_texts(record: Mapping[str, Any]) -> list[str]:
    """A round's truncation error, fullest first: ``1.2e-03``; where it is estimated (the range
    route: ``recompress_error_sd`` above 0) ``≈1.2e-03 ± 4e-06`` (the estimate and its standard
    error), then ``≈1.2e-03`` and ``1.2e-03`` for a line short of room."""
    err = float(record.get("recompress_error") or 0.0)
    sd = float(record.get("recompress_error_sd") or 0.0)
    plain = f"{err:.1e}"
    if not sd > 0:
        return [plain]
    return [f"≈{plain} ± {sd:.0e}", f"≈{plain}", plain]


def round_line(record: Mapping[str, Any], *, num_rounds: int) -> str:
    """The one progress line of a round's ``metrics.jsonl`` record.

    Parameters
    ----------
    record : mapping
        One record as :class:`server.run.runlog.RunLog` writes it (``round``, ``nodes``,
        ``global_rank``, ``recompress_error`` and, where estimated, ``recompress_error_sd``,
        ``bytes_up``, ``sampled``, ``round_s``).
    num_rounds : int
        The run's number of rounds.

    Returns
    -------
    str
        At most :data:`LINE_CHARS` characters for up to 9999 nodes and 999 rounds; an
        estimated error's ``≈`` and ``± sd`` where they fit (:func:`error_texts`).
    """
    counts = round_counts(record)
    parts = [f"{PREFIX} round {record['round']}/{num_rounds}"]
    if record["round"] > 0:
        parts.append(f"{counts.sampled} sampled, {counts.used} used, {counts.refused} refused")
    else:
        parts.append(f"{len(counts.eval_losses)} evaluated"
                     + (f", {counts.refused} refused" if counts.refused else ""))  # fmt: skip
    parts.append(f"eval loss {loss_summary(counts.eval_losses)}")
    seconds = seconds_text(float(record.get("round_s", record.get("elapsed_s", 0.0))))
    if record["round"] == 0:
        return " | ".join([*parts, seconds])
    tail = [f"up {bytes_text(record.get('bytes_up', 0))}", seconds]
    rank = f"rank {record.get('global_rank', 0)}, trunc err"
    for error in error_texts(record):  # the fullest that fits
        line = " | ".join([*parts, f"{rank} {error}", *tail])
        if len(line) <= LINE_CHARS:
            break
    return line


def refusal_lines(record: Mapping[str, Any], *, shown: int = REFUSALS_SHOWN) -> list[str]:
    """Up to ``shown`` lines naming a refused node and the first line of its reason, then
    ``… and K more, see metrics.jsonl``; each line at most :data:`LINE_CHARS` characters."""
    refused = [(name, str(e["rejected"])) for name, e in sorted(record.get("nodes", {}).items())
               if e.get("rejected")]  # fmt: skip
    lines = []
    for name, reason in refused[:shown]:
        first = reason.splitlines()[0] if reason.strip() else "?"
        line = f"{PREFIX}   refused {name}: {first}"
        lines.append(line if len(line) <= LINE_CHARS else line[: LINE_CHARS - 1] + "…")
    if len(refused) > shown:
        lines.append(f"{PREFIX}   … and {len(refused) - shown} more, see metrics.jsonl")
    return lines

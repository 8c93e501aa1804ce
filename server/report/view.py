"""What a run folder says, shaped for people: one :class:`RunView` per run.

Read from the run's own records (``settings.json``, ``metrics.jsonl``, ``adapter/``), the same
files ``fedlora run`` and ``fedlora simulate`` write; nothing here reaches a node. The run report
and the dashboard both render a ``RunView``.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from server.run.runlog import METRICS_FILE, read_metrics

SETTINGS_FILE = "settings.json"
ADAPTER_DIR = "adapter"
REPORT_FILE = "report.html"
REASON_CHARS = 300
Point = tuple[float, float]


@dataclass(frozen=True)
class Refusal:
    """A reply the server did not use: which node, which round, why."""

    round: int
    node: str
    reason: str


@dataclass(frozen=True)
class Privacy:
    """A node's last reported privacy figures; ``budget`` where the run set one (else None)."""

    node: str
    mode: str
    epsilon_record: float | None  # covers every release of the data set
    epsilon_institution: float | None  # only while every release was per institution (dp-lora)
    delta: float | None
    budget: float | None


@dataclass
class RunView:
    """One run: status, progress, and the series the charts draw (x = round)."""

    run_id: str
    path: Path
    strategy: str
    num_rounds: int
    status: str  # finished | running | stopped | interrupted
    round: int = 0
    elapsed_s: float = 0.0
    stopped: str | None = None
    eval_loss: dict[str, list[Point]] = field(default_factory=dict)
    global_rank: list[Point] = field(default_factory=list)
    trunc_error: list[Point] = field(default_factory=list)
    trunc_error_sd: list[Point] = field(default_factory=list)  # where estimated (range route)
    bytes_up: list[Point] = field(default_factory=list)
    bytes_down: list[Point] = field(default_factory=list)
    privacy: list[Privacy] = field(default_factory=list)
    refusals: list[Refusal] = field(default_factory=list)

    @property
    def has_adapter(self) -> bool:
        return (self.path / ADAPTER_DIR / "adapter_model.safetensors").is_file()


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _status(run_dir: Path, records: Sequence[dict[str, Any]], *, stale_s: float) -> str:
    if records and "stopped" in records[-1]:
        return "stopped"
    if (run_dir / ADAPTER_DIR).is_dir():
        return "finished"
    metrics = run_dir / METRICS_FILE
    newest = max((p.stat().st_mtime for p in (metrics, run_dir) if p.exists()), default=0.0)
    return "running" if time.time() - newest < stale_s else "interrupted"


def _series(records: Sequence[dict[str, Any]], view: RunView) -> None:
    for record in records:
        if "stopped" in record:
            view.stopped = str(record["stopped"])
            continue
        rnd = float(record["round"])
        for name, entry in sorted(record.get("nodes", {}).items()):
            loss = _number(entry.get("eval_loss"))
            if loss is not None:
                view.eval_loss.setdefault(name, []).append((rnd, loss))
            if entry.get("rejected"):
                reason = str(entry["rejected"])[:REASON_CHARS]
                view.refusals.append(Refusal(int(rnd), str(name), reason))
        if record["round"] > 0:
            for target, key in (
                (view.global_rank, "global_rank"),
                (view.trunc_error, "recompress_error"),
                (view.trunc_error_sd, "recompress_error_sd"),
                (view.bytes_up, "bytes_up"),
                (view.bytes_down, "bytes_down"),
            ):
                value = _number(record.get(key))
                if value is not None:
                    target.append((rnd, value))


def _privacy(records: Sequence[dict[str, Any]], budget: float | None) -> list[Privacy]:
    latest: dict[str, dict[str, Any]] = {}
    for record in records:
        for name, entry in record.get("nodes", {}).items():
            if entry.get("dp_mode"):
                latest[name] = entry
    return [
        Privacy(
            name,
            str(e["dp_mode"]),
            _number(e.get("dp_epsilon_record")),
            _number(e.get("dp_epsilon_institution")),
            _number(e.get("dp_delta")),
            budget if e["dp_mode"] != "none" else None,
        )
        for name, e in sorted(latest.items())
    ]


def run_view(run_dir: Path, *, stale_s: float = 900.0) -> RunView:
    """Read one run folder into a :class:`RunView`.

    Parameters
    ----------
    run_dir : pathlib.Path
        A folder written by a run (``settings.json``, ``metrics.jsonl``).
    stale_s : float, default 900
        A run without an adapter whose records changed within this many seconds is "running";
        older, it is "interrupted" (a crash; ``--resume`` continues it).

    Returns
    -------
    RunView
    """
    try:
        settings = json.loads((run_dir / SETTINGS_FILE).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        settings = {}
    records = read_metrics(run_dir)
    budget = _number(settings.get("privacy", {}).get("max_epsilon"))
    view = RunView(
        run_id=run_dir.name,
        path=run_dir,
        strategy=str(settings.get("strategy", "?")),
        num_rounds=int(settings.get("num_rounds", 0) or 0),
        status=_status(run_dir, records, stale_s=stale_s),
        round=max((int(r["round"]) for r in records if "stopped" not in r), default=0),
        elapsed_s=float(_number(records[-1].get("elapsed_s")) or 0.0) if records else 0.0,
        privacy=_privacy(records, budget if budget else None),
    )
    _series(records, view)
    return view


def run_folders(runs_root: Path) -> list[Path]:
    """Run folders under ``runs_root`` (those holding ``settings.json``), newest first."""
    if not runs_root.is_dir():
        return []
    found = [p for p in runs_root.iterdir() if p.is_dir() and (p / SETTINGS_FILE).is_file()]
    return sorted(found, key=lambda p: p.name, reverse=True)

"""What the end-of-run summary says about privacy: each node's ε, and why a node stopped."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

PRIVATE_MODES = ("dp-sgd", "dp-lora")
NOTE_CHARS = 200


def epsilon_column(records: Sequence[dict[str, Any]]) -> dict[str, str]:
    """Node name -> its last reported "ε (mode)"; empty when no node ran with privacy."""
    latest: dict[str, dict[str, Any]] = {}
    for record in records:
        for name, entry in record.get("nodes", {}).items():
            if entry.get("dp_mode"):
                latest[name] = entry
    if not any(e["dp_mode"] in PRIVATE_MODES for e in latest.values()):
        return {}
    column = {}
    for name, entry in latest.items():
        eps = entry.get("dp_epsilon")
        if entry["dp_mode"] not in PRIVATE_MODES:
            column[name] = f"none ({entry['dp_mode']})"
        elif eps is None:
            column[name] = f"? ({entry['dp_mode']})"
        else:
            column[name] = f"{eps:.3f} ({entry['dp_mode']}, δ={entry.get('dp_delta', 0):g})"
    return column


def decline_notes(records: Sequence[dict[str, Any]]) -> list[str]:
    """One line per node whose last train reply was not used (e.g. its privacy budget ran out),
    naming the round it stopped in and the node's own reason."""
    last_used: dict[str, int] = {}
    last_refused: dict[str, tuple[int, str]] = {}
    for record in records:
        for name, entry in record.get("nodes", {}).items():
            if entry.get("rank") is not None:
                last_used[name] = record["round"]
            elif entry.get("rejected"):
                last_refused[name] = (record["round"], str(entry["rejected"]))
    notes = []
    for name, (rnd, reason) in sorted(last_refused.items()):
        if last_used.get(name, -1) > rnd:
            continue
        first_line = reason.splitlines()[0] if reason else "?"
        if len(first_line) > NOTE_CHARS:
            first_line = first_line[: NOTE_CHARS - 1] + "…"
        notes.append(f"{name}: not used since round {rnd}: {first_line}")
    return notes

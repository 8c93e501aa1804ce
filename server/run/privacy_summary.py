"""What the end-of-run summary says about privacy: each node's ε, and why a node stopped.

Two guarantees, each with its unit: ε per record (every release of the node's data set) and ε
per institution (its whole data set; only where the node reports one). A node that reports no
per-institution figure has no such guarantee, and the column says so.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
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
        if entry["dp_mode"] not in PRIVATE_MODES:
            column[name] = f"none ({entry['dp_mode']})"
        else:
            column[name] = _guarantees(entry) + f" (δ={entry.get('dp_delta', 0):g})"
    return column


def _guarantees(entry: Mapping[str, Any]) -> str:
    record, institution = entry.get("dp_epsilon_record"), entry.get("dp_epsilon_institution")
    per_record = "?" if record is None else f"{record:.3f}"
    per_institution = "—" if institution is None else f"{institution:.3f}"
    return f"{per_record} per record, {per_institution} per institution"


def epsilon_note(metrics: Mapping[str, Any]) -> str:
    """ ", ε 1.234 per record[, 0.567 per institution]" for one train reply's metrics, or ""."""
    record = metrics.get("dp-epsilon-record")
    if not isinstance(record, float):
        return ""
    institution = metrics.get("dp-epsilon-institution")
    tail = f", {institution:.3f} per institution" if isinstance(institution, float) else ""
    return f", ε {record:.3f} per record{tail}"


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

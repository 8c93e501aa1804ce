"""The node's privacy ledger: every noised release of one data set, kept across runs.

The ledger belongs to the data, not to a run (docs/privacy.md): a node keeps, for its
training set (identified by a fingerprint of its records), every release's noise multiplier σ,
sampling rate q and number of steps, and the δ it reports at. ε is always recomputed from this
history with opacus's RDP accountant (``RDPAccountant.history`` has exactly this form), so a
restarted node process, or a second federation on the same data, continues from the ε already
spent. The file is JSON, written atomically (temporary file, fsync, rename); a damaged or
foreign file stops the node with an error and is never reset.

Written ahead: a round's release is appended as ``planned`` (after the budget check, under an
exclusive ``flock`` on ``privacy-ledger.lock`` in the state folder) *before* training starts, and
marked ``confirmed`` once the reply is built. A planned release counts as spent, so a crash in
between never loses one, and two processes on one state folder cannot both pass the guard.

Two units, two guarantees: every release bounds the privacy loss of each *record* (a DP-LoRA
release protects a whole data set, so a record too), so the per-record ε composes all of them;
the per-*institution* ε composes the DP-LoRA releases and exists only while no per-record
release (DP-SGD, or the noised record count) was made from the data set, since those carry no
useful bound for a whole data set.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import math
import secrets
import time
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Literal

from opacus.accountants import RDPAccountant

from common.files import write_json_atomic

LEDGER_FILE = "privacy-ledger.json"
LOCK_FILE = "privacy-ledger.lock"
FORMAT = "fedlora-privacy-ledger"
VERSION = 2
READS = (1, 2)  # version 1: no `id`/`status` (every release confirmed), no `noised_count`
# The data set's record count is released once, with Gaussian noise of this multiplier
# (sensitivity 1 record), as a per-record release of the ledger (client/privacy/round.py).
COUNT = "count"
PER_RECORD_ONLY = ("dp-sgd", COUNT)
Unit = Literal["record", "institution"]
PLANNED, CONFIRMED = "planned", "confirmed"

History = list[tuple[float, float, int]]  # opacus RDPAccountant.history: (σ, q, steps)


class LedgerError(RuntimeError):
    """The ledger file cannot be used; the node must not train until a person decides."""


@dataclass(frozen=True)
class Release:
    """One round's noised release: ``steps`` Gaussian steps with noise ``noise_multiplier``
    at sampling rate ``sample_rate`` (dp-lora: one step at q = 1)."""

    mode: str
    noise_multiplier: float
    sample_rate: float
    steps: int
    server_round: int = 0
    at: str = ""
    id: str = ""
    status: str = CONFIRMED


@dataclass(frozen=True)
class Ledger:
    """Every release of one data set (planned ones count as spent) and its noised record count."""

    fingerprint: str
    delta: float
    releases: tuple[Release, ...] = ()
    noised_count: int | None = None

    def history(self, unit: Unit = "record") -> History:
        """(σ, q, steps) of the releases that ``unit``'s guarantee composes, consecutive equal
        (σ, q) merged, as opacus keeps it."""
        merged: History = []
        for r in self.releases:
            if unit == "institution" and r.mode in PER_RECORD_ONLY:
                continue
            if merged and merged[-1][:2] == (r.noise_multiplier, r.sample_rate):
                merged[-1] = (r.noise_multiplier, r.sample_rate, merged[-1][2] + r.steps)
            else:
                merged.append((r.noise_multiplier, r.sample_rate, r.steps))
        return merged

    @property
    def steps(self) -> int:
        """Training steps so far (the count release is not a training step)."""
        return sum(r.steps for r in self.releases if r.mode != COUNT)

    def epsilon(self) -> float:
        """ε per record: every release, planned or confirmed."""
        return epsilon_of(self.history("record"), delta=self.delta)

    def institution_epsilon(self) -> float | None:
        """ε per institution (its whole data set), or None when there is no such guarantee:
        no DP-LoRA release yet, or a per-record-only release was made from the data set."""
        if not any(r.mode == "dp-lora" for r in self.releases) or any(
            r.mode in PER_RECORD_ONLY for r in self.releases
        ):
            return None
        return epsilon_of(self.history("institution"), delta=self.delta)

    def with_release(self, release: Release) -> Ledger:
        return replace(self, releases=(*self.releases, release))

    def confirmed(self, release_id: str) -> Ledger:
        """The ledger with release ``release_id`` marked confirmed."""
        if not any(r.id == release_id for r in self.releases):
            raise LedgerError(
                f"the planned release {release_id!r} is missing from the ledger: it was edited "
                "while this round trained; restore the ledger from a backup"
            )
        releases = tuple(
            replace(r, status=CONFIRMED) if r.id == release_id else r for r in self.releases
        )
        return replace(self, releases=releases)


def epsilon_of(history: History, *, delta: float) -> float:
    """ε of a (σ, q, steps) history at ``delta``, by opacus's RDP accountant (0 if empty)."""
    accountant = RDPAccountant()
    accountant.history = list(history)
    with warnings.catch_warnings():  # "optimal order is the largest alpha": opacus's own grid
        warnings.simplefilter("ignore", UserWarning)
        return float(accountant.get_epsilon(delta=delta))


def data_fingerprint(texts: Sequence[str]) -> str:
    """SHA-256 over the training records (length-prefixed, so record boundaries count)."""
    digest = hashlib.sha256()
    for text in texts:
        data = text.encode("utf-8")
        digest.update(len(data).to_bytes(8, "big"))
        digest.update(data)
    return digest.hexdigest()


def load_ledger(state_dir: Path, *, fingerprint: str, delta: float) -> Ledger:
    """The ledger in ``state_dir`` (a new, empty one if there is none).

    Raises :class:`LedgerError` when the file is damaged, not a fedlora ledger, belongs to
    other data, or was kept at a smaller δ than ``delta``.
    """
    path = state_dir / LEDGER_FILE
    if not path.exists():
        return Ledger(fingerprint=fingerprint, delta=delta)
    where = f"privacy ledger {str(path)!r}"
    keep = ("fedlora never resets a ledger: restore it from a backup, or, if it truly belongs "
            "to other data, move it away and give this node its own `state-dir`")  # fmt: skip
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        ledger = _from_json(raw)
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise LedgerError(f"{where} cannot be read ({err}); {keep}") from err
    if ledger.fingerprint != fingerprint:
        raise LedgerError(
            f"{where} belongs to data set {ledger.fingerprint[:12]}… but this node's training "
            f"data is {fingerprint[:12]}…: records in both would have their privacy loss "
            f"counted from zero; {keep}"
        )
    if delta > ledger.delta:
        raise LedgerError(
            f"`dp-delta` is {delta:g} but {where} is kept at δ={ledger.delta:g}: a larger δ "
            f"reports a smaller ε for the same releases; use `dp-delta` <= {ledger.delta:g}"
        )
    return replace(ledger, delta=delta)


@contextmanager
def locked(state_dir: Path) -> Iterator[None]:
    """Hold the exclusive lock of ``state_dir``'s ledger (``flock``; waits for other holders).

    Every read-check-write of the ledger happens inside it, so two node processes on one state
    folder see each other's planned releases.
    """
    state_dir.mkdir(parents=True, exist_ok=True)
    with (state_dir / LOCK_FILE).open("a+b") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def save_ledger(state_dir: Path, ledger: Ledger) -> Path:
    """Write the ledger atomically: a crash leaves the old file or the new one, never half."""
    state_dir.mkdir(parents=True, exist_ok=True)
    path = state_dir / LEDGER_FILE
    write_json_atomic(path, _to_json(ledger))
    return path


def new_release(mode: str, *, noise_multiplier: float, sample_rate: float, steps: int,
                server_round: int, status: str = CONFIRMED) -> Release:  # fmt: skip
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return Release(mode, noise_multiplier, sample_rate, steps, server_round, stamp,
                   secrets.token_hex(8), status)  # fmt: skip


def _to_json(ledger: Ledger) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "version": VERSION,
        "fingerprint": ledger.fingerprint,
        "delta": ledger.delta,
        "releases": [asdict(r) for r in ledger.releases],
        "noised_count": ledger.noised_count,
        # For people reading the file; never read back (ε is recomputed from the releases).
        "epsilon": ledger.epsilon(),
        "epsilon_per_institution": ledger.institution_epsilon(),
        "accountant": "opacus RDP",
    }


def _from_json(raw: Any) -> Ledger:
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise ValueError(f'not a fedlora privacy ledger (no "format": {FORMAT!r})')
    if raw.get("version") not in READS:
        raise ValueError(f"ledger version {raw.get('version')!r}, this fedlora reads {READS}")
    releases = tuple(_release(r) for r in raw["releases"])
    delta = float(raw["delta"])
    count = raw.get("noised_count")
    if not 0 < delta < 1 or not isinstance(raw["fingerprint"], str):
        raise ValueError("bad `delta` or `fingerprint`")
    if count is not None and (isinstance(count, bool) or not isinstance(count, int)):
        raise ValueError(f"bad `noised_count` {count!r}")
    return Ledger(raw["fingerprint"], delta, releases, count)


def _release(raw: Any) -> Release:
    release = Release(
        mode=str(raw["mode"]),
        noise_multiplier=float(raw["noise_multiplier"]),
        sample_rate=float(raw["sample_rate"]),
        steps=int(raw["steps"]),
        server_round=int(raw.get("server_round", 0)),
        at=str(raw.get("at", "")),
        id=str(raw.get("id", "")),
        status=str(raw.get("status", CONFIRMED)),
    )
    ok = (
        math.isfinite(release.noise_multiplier)
        and release.noise_multiplier > 0
        and 0 < release.sample_rate <= 1
        and release.steps >= 0
        and release.steps == raw["steps"]
        and release.status in (PLANNED, CONFIRMED)
    )
    if not ok:
        raise ValueError(f"release {raw!r} is out of range")
    return release

"""The SuperLink's SQLite state under a long write: Flower 1.39's own stores on one file.

A transaction that holds SQLite's write lock longer than Flower's 5 s busy timeout (a large
message preregistered on a loaded machine) made every other write fail with ``database is
locked``; with :func:`server.operator.state_db.wait_for_locks` they wait for it instead.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from flwr.app import ArrayRecord
from flwr.common import Array
from flwr.supercore.inflatable.inflatable_object import get_object_tree
from flwr.supercore.object_store.sql_object_store import SqlObjectStore
from sqlalchemy import text
from sqlalchemy.exc import OperationalError

from server.operator import state_db

FLOWER_BUSY_S = 5.0  # flwr.supercore.constant.SQLITE_PRAGMAS: busy_timeout 5000
HOLD_BEYOND_S = 2.5  # the holder keeps the lock this long past Flower's timeout


@pytest.fixture
def waiting() -> Iterator[None]:
    remove = state_db.wait_for_locks()
    try:
        yield
    finally:
        remove()


def _store(path: Path) -> SqlObjectStore:
    store = SqlObjectStore(str(path))
    store.initialize()
    return store


def _reply(arrays: int, seed: int) -> ArrayRecord:
    """A LoRA-like reply: ``arrays`` small float32 arrays (each an object and its chunk)."""
    rng = np.random.default_rng(seed)
    factors = {f"layers.{i}.lora_A.weight": rng.standard_normal((4, 64)) for i in range(arrays)}
    return ArrayRecord({k: Array(v.astype(np.float32)) for k, v in factors.items()})


def _write_behind_a_long_transaction(path: Path) -> list[str]:
    """Store B preregisters a message while store A's transaction holds the write lock until
    ``HOLD_BEYOND_S`` after Flower's busy timeout would have expired for B (or B gave up)."""
    holder, writer = _store(path), _store(path)
    holding, attempt_started, attempt_ended = (threading.Event() for _ in range(3))
    started_at: list[float] = []

    def hold() -> None:
        with holder.session():
            holder.preregister(1, get_object_tree(_reply(3, seed=1)))  # takes the write lock
            holding.set()
            attempt_started.wait(timeout=60)
            release_at = started_at[0] + FLOWER_BUSY_S + HOLD_BEYOND_S
            while time.monotonic() < release_at and not attempt_ended.is_set():
                time.sleep(0.05)

    thread = threading.Thread(target=hold)
    thread.start()
    try:
        assert holding.wait(timeout=60), "the holder never took the lock"
        started_at.append(time.monotonic())
        attempt_started.set()
        return writer.preregister(1, get_object_tree(_reply(40, seed=2)))
    finally:
        attempt_ended.set()  # a failed attempt need not wait for the holder
        thread.join()


def test_flowers_5_s_busy_timeout_fails_a_write_behind_a_longer_transaction(
    tmp_path: Path,
) -> None:
    """The failure as the SuperLink logged it (without the fix)."""
    with pytest.raises(OperationalError, match="database is locked"):
        _write_behind_a_long_transaction(tmp_path / "state.db")


def test_with_wait_for_locks_the_write_waits_and_succeeds(tmp_path: Path, waiting: None) -> None:
    started = time.monotonic()
    stored = _write_behind_a_long_transaction(tmp_path / "state.db")
    assert len(stored) == 1 + 2 * 40  # the record, each array and its chunk
    assert time.monotonic() - started >= FLOWER_BUSY_S + HOLD_BEYOND_S - 0.5  # it did wait


def test_every_connection_of_flowers_stores_gets_the_longer_timeout(
    tmp_path: Path, waiting: None
) -> None:
    store = _store(tmp_path / "state.db")  # Flower's connect listener sets 5000 ms first
    with store.session() as session:
        assert session.execute(text("PRAGMA busy_timeout")).scalar() == 25_000
        assert session.execute(text("PRAGMA journal_mode")).scalar() == "wal"


def test_removing_it_leaves_flowers_setting(tmp_path: Path) -> None:
    state_db.wait_for_locks()()
    store = _store(tmp_path / "state.db")
    with store.session() as session:
        assert session.execute(text("PRAGMA busy_timeout")).scalar() == 5_000


def test_a_nonpositive_timeout_is_refused() -> None:
    with pytest.raises(ValueError, match="`timeout_s` is 0"):
        state_db.wait_for_locks(timeout_s=0)


def test_the_superlink_waits_for_locks_before_flower_opens_its_state(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``superlink_main`` (what ``server start`` runs) installs the wait before it serves: a
    store Flower opens when uvicorn starts the app has the longer timeout."""
    import uvicorn

    from server.operator import superlink_main

    removers = []

    def install(**kwargs: float) -> object:
        removers.append(state_db.wait_for_locks(**kwargs))
        return removers[-1]

    seen: list[int] = []

    def serve(**_kwargs: object) -> None:  # instead of serving: what the lifespan would open
        with _store(tmp_path / "state.db").session() as session:
            seen.append(int(session.execute(text("PRAGMA busy_timeout")).scalar() or 0))

    monkeypatch.setattr(superlink_main, "wait_for_locks", install)
    monkeypatch.setattr(uvicorn, "run", serve)
    token = tmp_path / "operator.token"
    token.write_text("x" * 64)
    try:
        superlink_main.main(["--token-file", str(token), "--", "--database",
                             str(tmp_path / "state.db"), "--insecure"])  # fmt: skip
    finally:
        for remove in removers:
            remove()
    assert seen == [25_000]

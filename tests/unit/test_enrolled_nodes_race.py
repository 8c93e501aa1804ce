"""``FED/enrolled-nodes.json`` has two writers in two processes: the enrollment service in
`server start` and `server revoke`. Each writes the map inside the registry transaction that
changed it, so a later revocation cannot be overwritten by an earlier enrollment's map.

The interleaving is forced, not hoped for: the enrollment is paused inside its map write (after
it read the state it writes) while the revocation runs."""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from server.operator.enrollment import registry as registry_module
from server.operator.enrollment.registry import Registry

WAIT_S = 60.0  # a bound on waiting for a thread that is running, never a pause


def _invite_and_enroll(registry: Registry, name: str, node_id: int) -> None:
    registry.add_invitation(token_id=name, name=name, secret="s", ttl_s=600)
    registry.enroll(token_id=name, secret="s", public_key=f"key-{name}", fingerprint=f"fp-{name}",
                    peer="test", register=lambda _n, _k: node_id)  # fmt: skip


def _map(registry: Registry) -> dict[str, str]:
    return dict(json.loads(registry.names_path.read_text("utf-8"))["nodes"])


class PausedWrite:
    """Wraps the map writer: the first write made by ``thread_name`` stops until released."""

    def __init__(self, thread_name: str) -> None:
        self.thread_name = thread_name
        self.writing, self.release = threading.Event(), threading.Event()
        self.real = registry_module.write_enrolled_nodes

    def __call__(self, path: Path, names: dict[int, str]) -> None:
        if threading.current_thread().name == self.thread_name and not self.writing.is_set():
            self.writing.set()
            assert self.release.wait(WAIT_S), "the test never released the paused write"
        self.real(path, names)


@pytest.fixture
def paused(monkeypatch: pytest.MonkeyPatch) -> Iterator[PausedWrite]:
    pause = PausedWrite("enroll")
    monkeypatch.setattr(registry_module, "write_enrolled_nodes", pause)
    yield pause
    pause.release.set()


def _in_thread(name: str, work: Callable[[], None]) -> tuple[threading.Thread, list[BaseException]]:
    errors: list[BaseException] = []

    def run() -> None:
        try:
            work()
        except BaseException as err:  # handed to the test thread
            errors.append(err)

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    return thread, errors


def test_a_revocation_during_an_enrollments_map_write_waits_and_is_not_lost(
    tmp_path: Path, paused: PausedWrite
) -> None:
    """Before the fix the enrollment wrote the map after its commit, outside any lock: the
    revocation committed and wrote {hospital-a}; then the enrollment, resumed, wrote the map it
    had read before: {hospital-a, bank-b}, the revoked bank-b back in."""
    server = Registry(tmp_path / "enrollment.db")  # `server start`'s enrollment service
    _invite_and_enroll(server, "bank-b", 2)
    server.add_invitation(token_id="hospital-a", name="hospital-a", secret="s", ttl_s=600)
    # `server revoke` in another process, told not to wait for a lock: a refusal shows the wait
    revoker = Registry(tmp_path / "enrollment.db", busy_timeout_s=0.0)

    enroll, errors = _in_thread("enroll", lambda: server.enroll(
        token_id="hospital-a", secret="s", public_key="key-a", fingerprint="fp-a", peer="test",
        register=lambda _n, _k: 1))  # fmt: skip
    assert paused.writing.wait(WAIT_S)  # hospital-a's enrollment is writing the map now
    try:
        revoker.mark_revoked("bank-b")
        waited = False
    except sqlite3.OperationalError as err:  # it would have waited for the enrollment
        assert "database is locked" in str(err)
        waited = True
    paused.release.set()
    enroll.join(WAIT_S)
    assert not enroll.is_alive() and not errors
    if waited:
        assert _map(server) == {"1": "hospital-a", "2": "bank-b"}
        revoker.mark_revoked("bank-b")  # now it goes through
    assert _map(server) == {"1": "hospital-a"}  # before the fix: bank-b was back in
    assert [n.status for n in server.nodes()] == ["revoked", "enrolled"]  # bank-b, hospital-a
    assert waited, "the revocation ran while the enrollment was writing the map"


def test_a_waiting_revocation_completes_after_the_enrollment_and_the_map_has_both(
    tmp_path: Path, paused: PausedWrite
) -> None:
    """The same interleaving with the default lock wait: the revocation simply waits."""
    server = Registry(tmp_path / "enrollment.db")
    _invite_and_enroll(server, "bank-b", 2)
    server.add_invitation(token_id="hospital-a", name="hospital-a", secret="s", ttl_s=600)
    revoker = Registry(tmp_path / "enrollment.db")

    enroll, enroll_errors = _in_thread("enroll", lambda: server.enroll(
        token_id="hospital-a", secret="s", public_key="key-a", fingerprint="fp-a", peer="test",
        register=lambda _n, _k: 1))  # fmt: skip
    assert paused.writing.wait(WAIT_S)
    revoke, revoke_errors = _in_thread("revoke", lambda: revoker.mark_revoked("bank-b"))
    paused.release.set()
    for thread in (enroll, revoke):
        thread.join(WAIT_S)
        assert not thread.is_alive()
    assert not enroll_errors and not revoke_errors
    assert _map(server) == {"1": "hospital-a"}


def test_a_failed_map_write_rolls_the_change_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The map and the registry change together: a revocation whose map cannot be written is
    not committed (the node stays enrolled, and the map still names it)."""
    registry = Registry(tmp_path / "enrollment.db")
    _invite_and_enroll(registry, "bank-b", 2)

    def disk_full(path: Path, names: dict[int, str]) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(registry_module, "write_enrolled_nodes", disk_full)
    with pytest.raises(OSError, match="No space left"):
        registry.mark_revoked("bank-b")
    node = registry.node("bank-b")
    assert node is not None and node.status == "enrolled"
    assert _map(registry) == {"2": "bank-b"}

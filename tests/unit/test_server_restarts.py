"""``server.operator.restarts.Restarting``: when the SuperExec is started again (fake clock and
fake processes: no process is started)."""

from __future__ import annotations

from pathlib import Path

import pytest

from server.operator import restarts


class FakeProc:
    def __init__(self) -> None:
        self.returncode: int | None = None

    def poll(self) -> int | None:
        return self.returncode


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    now = [100.0]
    monkeypatch.setattr(restarts.time, "monotonic", lambda: now[0])
    return now


def test_an_exited_daemon_is_started_again_after_a_pause_that_doubles(
    clock: list[float], monkeypatch: pytest.MonkeyPatch
) -> None:
    started: list[FakeProc] = []
    monkeypatch.setattr(
        restarts, "spawn", lambda *a, **k: started.append(FakeProc()) or started[-1]
    )
    lines: list[str] = []
    daemon = restarts.Restarting("SuperExec", ["x"], {}, Path("superexec.log"), lines.append)
    daemon.check()
    assert len(started) == 1
    daemon.check()
    assert len(started) == 1  # running: nothing to do

    started[-1].returncode = 1
    daemon.check()  # reported, restart due in 1 s
    assert len(started) == 1 and lines[-1].endswith("starting a new one in 1 s")
    assert "code 1" in lines[-1]
    clock[0] += 1.0
    daemon.check()
    assert len(started) == 2

    started[-1].returncode = 1  # dies young again: 2 s
    daemon.check()
    assert lines[-1].endswith("in 2 s")
    clock[0] += 1.9
    daemon.check()
    assert len(started) == 2
    clock[0] += 0.1
    daemon.check()
    assert len(started) == 3

    clock[0] += restarts.STEADY_S  # ran steadily: the pause is back to 1 s
    started[-1].returncode = -9
    daemon.check()
    assert lines[-1].endswith("in 1 s") and daemon.restarts == 3

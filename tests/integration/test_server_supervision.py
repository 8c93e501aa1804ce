"""``fedlora server start`` outlives its SuperExec: real processes (the SuperLink, Flower's
SuperExec, a run's ServerApp), no nodes. About 30 s on a shared 2-core machine.

Flower's SuperExec exits on a Runtime API error it does not retry (a 500 from the SuperLink,
e.g. ``database is locked``); before, ``server start`` then stopped the whole federation.
"""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from tests.deploy_harness import FEDLORA, Daemons, Federation, env, fedlora, free_ports, wait_for

pytestmark = pytest.mark.slow


@pytest.fixture
def federation(tmp_path: Path) -> Iterator[Federation]:
    (tmp_path / "logs").mkdir()
    daemons = Daemons(tmp_path / "logs")
    fleet, control, enroll = free_ports(3)
    fed = Federation(tmp_path / "FED", tmp_path, (fleet, control, enroll), daemons)
    done = fedlora("server", "init", "--dir", fed.fed, "--host", "127.0.0.1")
    assert done.returncode == 0, done.stderr
    try:
        fed.start_server()
        yield fed
    finally:
        daemons.stop_all(force=True)


def _under(server_pid: int, program: str) -> list[psutil.Process]:
    """The live processes under ``server start`` running ``program``."""
    found = []
    for proc in psutil.Process(server_pid).children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if proc.status() != psutil.STATUS_ZOMBIE and any(
                part.endswith(program) for part in proc.cmdline()
            ):
                found.append(proc)
    return found


@contextlib.contextmanager
def _run(federation: Federation) -> Iterator[subprocess.Popen[str]]:
    """``fedlora run`` of one round in the background (it waits for nodes that never come)."""
    argv = [str(FEDLORA), "run", "--dir", str(federation.fed), "--rounds", "1",
            "--config", "node-wait-s=600"]  # fmt: skip
    proc = subprocess.Popen(argv, env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)  # fmt: skip
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


def test_a_superexec_that_dies_is_started_again_and_launches_runs(
    federation: Federation,
) -> None:
    server = federation.daemons.procs["server"]
    with _run(federation) as in_flight:
        wait_for(lambda: len(_under(server.pid, "flwr-serverapp")) == 1, 120, "the ServerApp")
        (app,) = _under(server.pid, "flwr-serverapp")
        (first,) = _under(server.pid, "flower-superexec")
        first.kill()  # as Flower's SuperExec exits on a 500: abruptly, the server still up
        # The run in flight loses its ServerApp (it follows its SuperExec): it ends failed.
        output, _ = in_flight.communicate(timeout=120)
        assert in_flight.returncode == 1
        assert "finished:failed" in output, output

    def restarted() -> bool:
        found = _under(server.pid, "flower-superexec")
        return len(found) == 1 and found[0].pid != first.pid

    wait_for(restarted, 60, "a new SuperExec")
    log = federation.daemons.log("server")
    assert "SuperExec (runs' launcher) exited (code -9" in log
    assert "starting a new one in 1 s" in log
    app.wait(timeout=60)
    with _run(federation):  # the new SuperExec launches the next run
        wait_for(lambda: len(_under(server.pid, "flwr-serverapp")) == 1, 120, "a new ServerApp")
        assert _under(server.pid, "flwr-serverapp")[0].pid != app.pid
    assert server.poll() is None, federation.daemons.log("server")

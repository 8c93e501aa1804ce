"""``fedlora server start`` outlives its SuperExec: real processes (the SuperLink, Flower's
SuperExec), no nodes. About 30 s on a shared 2-core machine.

Flower's SuperExec exits on a Runtime API error it does not retry (a 500 from the SuperLink,
e.g. ``database is locked``); before, ``server start`` then stopped the whole federation.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from tests.deploy_harness import Daemons, Federation, fedlora, free_ports, wait_for

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


def _superexecs(server_pid: int) -> list[psutil.Process]:
    found = []
    for proc in psutil.Process(server_pid).children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if proc.status() != psutil.STATUS_ZOMBIE and any(
                part.endswith("flower-superexec") for part in proc.cmdline()
            ):
                found.append(proc)
    return found


def test_a_superexec_that_dies_is_started_again_and_serves(federation: Federation) -> None:
    server = federation.daemons.procs["server"]
    wait_for(lambda: len(_superexecs(server.pid)) == 1, 60, "the SuperExec")
    (first,) = _superexecs(server.pid)

    first.kill()  # as Flower's SuperExec exits on a 500: abruptly, with the server still up
    first.wait(timeout=30)

    def restarted() -> bool:
        found = _superexecs(server.pid)
        return len(found) == 1 and found[0].pid != first.pid

    wait_for(restarted, 60, "a new SuperExec")
    (second,) = _superexecs(server.pid)
    control_port = federation.ports[1]

    def connected() -> bool:  # polling the SuperLink's Runtime API for runs (keep-alive)
        with contextlib.suppress(psutil.Error):
            links = second.net_connections()
            return any(c.status == psutil.CONN_ESTABLISHED and c.raddr
                       and c.raddr.port == control_port for c in links)  # fmt: skip
        return False

    wait_for(connected, 60, "the new SuperExec's connection to the Runtime API")
    assert server.poll() is None, federation.daemons.log("server")
    assert second.is_running()
    log = federation.daemons.log("server")
    assert "SuperExec (runs' launcher) exited (code -9" in log
    assert "starting a new one in 1 s" in log
    nodes = fedlora("server", "nodes", "--dir", federation.fed)  # the Control API answers
    assert nodes.returncode == 0 and "online status unknown" not in nodes.stdout, nodes.stdout

"""``common/daemon.py``: a daemon we start dies with our command, however the command dies.

Real processes, no Flower: a parent Python process spawns ``sleep`` the way ``fedlora server
start`` and ``fedlora node start`` spawn their daemons (own session, own process group), then
the parent is killed with SIGKILL, so no ``finally`` of ours runs.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

REPO = Path(__file__).resolve().parents[2]

PARENT = """
import sys, time
from common.daemon import spawn
child = spawn(["sleep", "300"], env={"PATH": "/usr/bin:/bin"})
print(child.pid, flush=True)
time.sleep(300)
"""


def _becomes(pid: int, cmdline: list[str], timeout: float = 5.0) -> bool:
    """The wrapper execs the daemon itself (same PID) within ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(psutil.Error):
            if psutil.Process(pid).cmdline() == cmdline:
                return True
        time.sleep(0.05)
    return False


def _gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.1)
    return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="parent-death signal: Linux")
def test_a_spawned_daemon_dies_when_its_parent_is_killed() -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    parent = subprocess.Popen([sys.executable, "-c", PARENT], env=env, stdout=subprocess.PIPE,
                              text=True, start_new_session=True)  # fmt: skip
    child = 0
    try:
        assert parent.stdout is not None
        child = int(parent.stdout.readline())
        assert _becomes(child, ["sleep", "300"])
        assert os.getsid(child) != os.getsid(parent.pid)  # own session: no group kill reaches it
        parent.kill()  # SIGKILL: nothing of ours runs
        parent.wait()
        assert _gone(child, timeout=5.0), "the daemon outlived its parent"
    finally:
        parent.kill()
        parent.wait()
        with contextlib.suppress(ProcessLookupError):
            if child:
                os.kill(child, signal.SIGKILL)


def test_the_daemon_keeps_running_while_its_parent_lives(tmp_path: Path) -> None:
    from common.daemon import spawn, stop

    proc = spawn(["sleep", "300"], env={"PATH": "/usr/bin:/bin"}, log_path=tmp_path / "log")
    try:
        assert _becomes(proc.pid, ["sleep", "300"])
        time.sleep(0.5)
        assert proc.poll() is None
    finally:
        stop(proc, grace_s=2.0)
    assert proc.returncode == -signal.SIGTERM

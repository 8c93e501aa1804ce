"""Starting and ending Flower's daemons (SuperLink, SuperNode) and the node worker as
foreground children.

Each daemon runs in its own process group. Flower's daemons spawn children of their own
(``flower-superexec``, ``flwr-serverapp``, ``flwr-clientapp``), some in new sessions; on exit we
end the daemon's group and every descendant we saw, so nothing outlives the command.

That needs our command to live to its ``finally``. When it is killed outright (SIGKILL: the OOM
killer, a service manager, a person), Linux's parent-death signal stops its children instead:
each daemon starts through a tiny wrapper that sets ``PR_SET_PDEATHSIG`` to SIGKILL and then
``exec``s the daemon (the setting survives ``exec``), so the kernel kills the daemon when the
thread that spawned it dies — :func:`spawn` must be called from a thread that lives as long as
the daemon should (the main thread, in our commands). Flower's own children watch their parent's
PID (``--parent-pid``) and exit within a second when it is gone. Torch-free.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import psutil

GRACE_S = 10.0
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>

# python -I -c WRAPPER PARENT_PID ARGV...: die with the parent, then become ARGV. No imports
# beyond the standard library (about 20 ms). If the parent is already gone, exit at once.
_WRAPPER = f"""
import ctypes, os, signal, sys
if ctypes.CDLL(None, use_errno=True).prctl({PR_SET_PDEATHSIG}, signal.SIGKILL, 0, 0, 0) != 0:
    sys.exit("prctl(PR_SET_PDEATHSIG) failed: errno " + str(ctypes.get_errno()))
if os.getppid() != int(sys.argv[1]):
    sys.exit(1)
os.execvp(sys.argv[2], sys.argv[2:])
"""


def bin_dir() -> Path:
    """The environment's ``bin`` folder (flower-superlink, flwr, flwr-clientapp live there)."""
    return Path(sys.executable).parent


def daemon_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The daemons' environment: this venv first on PATH, telemetry off."""
    env = dict(os.environ)
    env["PATH"] = f"{bin_dir()}{os.pathsep}{env.get('PATH', '')}"
    env["FLWR_TELEMETRY_ENABLED"] = "0"
    env.update(extra or {})
    return env


def spawn(
    argv: Sequence[str], *, env: Mapping[str, str], log_path: Path | None = None,
    watch: Callable[[bytes], None] | None = None,
) -> subprocess.Popen[bytes]:  # fmt: skip
    """Start ``argv`` in a new process group; output to ``log_path`` (appended), or passed
    through to ours with each line shown to ``watch`` first, or inherited.

    On Linux the child is killed when the calling thread dies, however it dies (module doc).
    """
    out = log_path.open("ab") if log_path is not None else None
    piped = out is None and watch is not None
    try:
        proc = subprocess.Popen(
            with_parent_death_signal(argv),
            env=dict(env),
            stdout=subprocess.PIPE if piped else out,
            stderr=subprocess.STDOUT if out or piped else None,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    finally:
        if out is not None:
            out.close()
    if piped and watch is not None:
        threading.Thread(target=_relay, args=(proc, watch), daemon=True).start()
    return proc


def with_parent_death_signal(argv: Sequence[str]) -> list[str]:
    """``argv`` behind the wrapper that makes it die with us (Linux); ``argv`` elsewhere."""
    if not sys.platform.startswith("linux"):
        return list(argv)
    return [sys.executable, "-I", "-c", _WRAPPER, str(os.getpid()), *argv]


def _relay(proc: subprocess.Popen[bytes], watch: Callable[[bytes], None]) -> None:
    assert proc.stdout is not None
    for line in proc.stdout:  # ends when every holder of the pipe (children too) has exited
        watch(line)
        sys.stdout.buffer.write(line)
        sys.stdout.flush()


def descendants(pid: int) -> list[psutil.Process]:
    try:
        return list(psutil.Process(pid).children(recursive=True))
    except psutil.Error:
        return []


def stop(proc: subprocess.Popen[bytes], *, grace_s: float = GRACE_S) -> None:
    """SIGTERM the process group and every descendant; SIGKILL what is left after ``grace_s``."""
    family = descendants(proc.pid)
    groups = {proc.pid} | {_pgid(p.pid) for p in family} - {0, os.getpgrp()}
    for group in groups:
        _killpg(group, signal.SIGTERM)
    for child in family:
        _signal(child, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=grace_s)
    _, alive = psutil.wait_procs(family, timeout=max(0.0, deadline - time.monotonic()))
    for group in groups:
        _killpg(group, signal.SIGKILL)
    for child in alive:
        _signal(child, signal.SIGKILL)
    if proc.poll() is None:
        proc.kill()
    proc.wait()


def _pgid(pid: int) -> int:
    try:
        return os.getpgid(pid)
    except OSError:
        return 0


def _killpg(group: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(group, sig)


def _signal(proc: psutil.Process, sig: int) -> None:
    with contextlib.suppress(psutil.Error):
        proc.send_signal(sig)


class StopRequested(Exception):
    """SIGINT or SIGTERM arrived while a foreground command was running."""


def raise_on_signals() -> None:
    """Turn SIGTERM (and SIGINT) into :class:`StopRequested` so ``finally`` blocks run."""

    def handler(signum: int, _frame: object) -> None:
        raise StopRequested(signal.Signals(signum).name)

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)

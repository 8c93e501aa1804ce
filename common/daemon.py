"""Starting and ending Flower's daemons (SuperLink, SuperNode) as foreground children.

Each daemon runs in its own process group. Flower's daemons spawn children of their own
(``flower-superexec``, ``flwr-serverapp``, ``flwr-clientapp``), some in new sessions; on exit we
end the daemon's group and every descendant we saw, so nothing outlives the command.
Torch-free.
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
    through to ours with each line shown to ``watch`` first, or inherited."""
    out = log_path.open("ab") if log_path is not None else None
    piped = out is None and watch is not None
    try:
        proc = subprocess.Popen(
            list(argv),
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

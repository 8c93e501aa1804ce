"""A daemon that ``server start`` starts again whenever it exits: Flower's SuperExec.

The SuperExec launches each run's ServerApp; it holds no state of its own (the SuperLink keeps
runs, messages and tasks), so a new one simply goes on taking the SuperLink's pending runs.
Flower's SuperExec exits on the first error answer of the Runtime API it does not retry (a 500,
e.g. the SuperLink's ``database is locked``, ``server.operator.state_db``); before this, the
whole ``server start`` stopped with it.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from common.daemon import spawn, stop

PAUSE_S = (1.0, 30.0)  # first pause before a restart; the pause doubles up to the second
STEADY_S = 60.0  # a daemon that ran this long before it exited is restarted after PAUSE_S[0]


@dataclass
class Restarting:
    """A daemon started by :meth:`check` whenever it is not running, after a pause that
    doubles while it keeps exiting young. ``check`` and ``stop`` from the thread that is to
    outlive it (``common.daemon.spawn``)."""

    name: str
    argv: Sequence[str]
    env: Mapping[str, str]
    log_path: Path
    echo: Callable[[str], None]
    proc: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    _since: float = 0.0
    _pause: float = PAUSE_S[0]
    _due: float = 0.0

    def check(self) -> None:
        """Start the daemon if it is not running and its pause is over; report an exit."""
        now = time.monotonic()
        if self.proc is not None and self.proc.poll() is None:
            return
        if self.proc is not None:
            if now - self._since >= STEADY_S:
                self._pause = PAUSE_S[0]
            self.echo(
                f"[fedlora] {self.name} exited (code {self.proc.returncode}; log: "
                f"{self.log_path}); starting a new one in {self._pause:.0f} s"
            )
            self.proc, self._due = None, now + self._pause
            self._pause = min(self._pause * 2, PAUSE_S[1])
            self.restarts += 1
        if now >= self._due:
            self.proc = spawn(self.argv, env=self.env, log_path=self.log_path)
            self._since = now

    def stop(self) -> None:
        """End the daemon and everything it started (``common.daemon.stop``)."""
        if self.proc is not None:
            stop(self.proc)
            self.proc = None

"""``node start`` stops at the first activation refusal when the server names the key revoked or
unknown, instead of retrying for ``ACTIVATION_RETRY_S`` (real child processes, no Flower)."""

from __future__ import annotations

import sys
import time

import pytest

from client.node import start
from common.daemon import daemon_env

# Stands in for Flower's SuperNode refused by the SuperLink (its log line; Flower exits 305).
REFUSED_SUPERNODE = [
    sys.executable,
    "-c",
    "print('ERROR : Failed to activate SuperNode', flush=True); exit(3)",
]


def test_a_refused_key_stops_at_once_with_the_servers_reason() -> None:
    lines: list[str] = []
    asked: list[int] = []

    def refused() -> str:
        asked.append(1)
        return "this node was revoked by the operator on 2026-11-29 15:20 UTC; ask ..."

    worker = start.Worker([sys.executable, "-c", "import time; time.sleep(120)"],
                          daemon_env(), lines.append)  # fmt: skip
    began = time.monotonic()
    code = start._supervise(REFUSED_SUPERNODE, daemon_env(), lines.append, worker=worker,
                            refused=refused)  # fmt: skip
    assert code == 1 and asked == [1]
    assert time.monotonic() - began < start.RETRY_PAUSE_S  # not one retry
    assert lines == ["[fedlora] error: this node was revoked by the operator on 2026-11-29 "
                     "15:20 UTC; ask ..."]  # fmt: skip
    assert worker.proc is None  # the worker was ended with the node


def test_a_server_that_cannot_say_gets_the_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(start, "RETRY_PAUSE_S", 0.1)
    monkeypatch.setattr(start, "ACTIVATION_RETRY_S", 0.5)
    lines: list[str] = []
    worker = start.Worker([sys.executable, "-c", "pass"], daemon_env(), lines.append)
    code = start._supervise(REFUSED_SUPERNODE, daemon_env(), lines.append, worker=worker,
                            refused=lambda: None)  # fmt: skip
    assert code == 1
    assert any("did not activate this node yet" in line for line in lines)
    assert "exit code 3)" in lines[-1]

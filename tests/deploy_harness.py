"""Real fedlora processes on loopback for the integration tests: a federation folder, the
server and nodes as foreground daemons (each in its own process group), one-shot commands.

Every process carries a marker in its environment (inherited by Flower's own children), so a
test can prove that nothing it started outlives it.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psutil

FEDLORA = Path(sys.executable).parent / "fedlora"
MARKER = "FEDLORA_DEPLOY_TEST"
TOKEN = uuid.uuid4().hex
RUN_TIMEOUT_S = 420.0


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in socks]
    finally:
        for sock in socks:
            sock.close()


def env() -> dict[str, str]:
    env = dict(os.environ)
    env.update({MARKER: TOKEN, "FLWR_TELEMETRY_ENABLED": "0", "HF_HUB_OFFLINE": "1"})
    # Every node, the server and the tests share a few cores: one OpenMP thread per process.
    # torch's threads spin-wait for each other on oversubscribed cores (a 100-step round of the
    # embedded model took 134 s with torch's default of a thread per core, at load 9 on 2 cores).
    env["OMP_NUM_THREADS"] = "1"
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def fedlora(*args: str | Path, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(FEDLORA), *map(str, args)], env=env(), capture_output=True, text=True,
        timeout=timeout, check=False,
    )  # fmt: skip


def marked() -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter():
        with contextlib.suppress(psutil.Error):
            if proc.pid != os.getpid() and proc.environ().get(MARKER) == TOKEN:
                found.append(proc)
    return found


@dataclass
class Daemons:
    """Foreground `fedlora ... start` commands, each in its own process group."""

    logs: Path
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def start(self, name: str, *args: str | Path) -> None:
        with (self.logs / f"{name}.log").open("ab") as out:
            self.procs[name] = subprocess.Popen(
                [str(FEDLORA), *map(str, args)], env=env(), stdout=out,
                stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip

    def log(self, name: str) -> str:
        return (self.logs / f"{name}.log").read_text(errors="replace")

    def stop(self, name: str, *, timeout: float = 30.0) -> int:
        proc = self.procs.pop(name)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            return proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            return proc.wait()

    def crash(self, name: str) -> None:
        """SIGKILL the daemon and every process under it at once, like a machine failing."""
        proc = self.procs.pop(name)
        family = [psutil.Process(proc.pid)]
        with contextlib.suppress(psutil.Error):
            family += psutil.Process(proc.pid).children(recursive=True)
        for member in family:
            with contextlib.suppress(psutil.Error):
                member.kill()
        proc.wait()

    def stop_all(self, *, force: bool = False) -> None:
        for name in list(self.procs):
            self.stop(name)
        for proc in marked() if force else []:  # after a failure: whatever was left behind
            with contextlib.suppress(psutil.Error):
                proc.kill()


@dataclass(frozen=True)
class Federation:
    fed: Path
    root: Path
    ports: tuple[int, int, int]  # fleet, control, enroll
    daemons: Daemons
    dashboard_port: int = 0  # 0: off

    def start_server(self) -> None:
        fleet, control, enroll = self.ports
        (self.daemons.logs / "server.log").touch()
        self.daemons.start(
            "server", "server", "start", "--dir", self.fed, "--bind", "127.0.0.1",
            "--fleet-port", str(fleet), "--control-port", str(control),
            "--enroll-port", str(enroll), "--dashboard-port", str(self.dashboard_port),
        )  # fmt: skip
        log = self.daemons.logs / "server.log"
        seen = len(log.read_text(errors="replace"))  # a restart appends to the same log

        def ready() -> bool:
            return "next: fedlora server invite" in self.daemons.log("server")[seen:]

        wait_for(ready, 60, "server")

    def invite(self, name: str, ttl: str = "10m") -> str:
        done = fedlora("server", "invite", "--dir", self.fed, "--name", name, "--ttl", ttl)
        assert done.returncode == 0, done.stderr
        return done.stdout.strip().splitlines()[-1]

    def join_and_start(self, name: str, data: str, rank: int, *extra: str) -> None:
        """Invite ``name``, join it into ``root/name`` and start it on ``root/data/<data>``."""
        if not (self.root / name / "node.json").is_file():
            joined = fedlora("node", "join", self.invite(name), "--dir", self.root / name)
            assert joined.returncode == 0, joined.stderr
        folder = self.root / "data" / data
        self.daemons.start(
            name, "node", "start", "--dir", self.root / name, "--data", folder, "--rank", str(rank),
            *extra,
        )  # fmt: skip

    def wait_online(self, *names: str, timeout: float = 90.0) -> None:
        def online() -> bool:
            status = self.status()
            return all(status.get(name) == "online" for name in names)

        wait_for(online, timeout, f"{', '.join(names)} online")

    def status(self) -> dict[str, str]:
        done = fedlora("server", "nodes", "--dir", self.fed)
        assert done.returncode == 0, done.stderr
        rows = [line.split() for line in done.stdout.splitlines()[1:] if line.strip()]
        return {row[0]: row[3] for row in rows if len(row) >= 5}


@contextlib.contextmanager
def federation_at(root: Path) -> Iterator[Federation]:
    """A federation folder with the demo data and a running server; everything ended after."""
    (root / "logs").mkdir()
    daemons = Daemons(root / "logs")
    fleet, control, enroll, dashboard = free_ports(4)
    fed = Federation(root / "FED", root, (fleet, control, enroll), daemons, dashboard)
    done = fedlora("server", "init", "--dir", fed.fed, "--host", "127.0.0.1")
    assert done.returncode == 0, done.stderr
    data = fedlora("data", "synth", "--out", root / "data", "--partitions", "3",
                   "--train", "48", "--eval", "16")  # fmt: skip
    assert data.returncode == 0, data.stderr
    try:
        fed.start_server()
        yield fed
    finally:
        daemons.stop_all(force=True)


def wait_for(
    condition: Callable[[], bool], timeout: float, what: str, *, every_s: float = 0.5
) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not ready after {timeout:.0f} s")
        time.sleep(every_s)


def run(federation: Federation, *config: str) -> subprocess.CompletedProcess[str]:
    args: list[str | Path] = ["run", "--dir", federation.fed]
    for item in ("local-steps=4", "synth-eval-examples=16", "batch-size=4", *config):
        args += ["--config", item]
    return fedlora(*args, timeout=RUN_TIMEOUT_S)


def run_folder(stdout: str) -> str:
    line = next(line for line in stdout.splitlines() if "run folder " in line)
    return line.split("run folder ", 1)[1].split(" (resumed")[0].strip()


def run_records(stdout: str) -> list[dict[str, object]]:
    lines = (Path(run_folder(stdout)) / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines if line.strip()]

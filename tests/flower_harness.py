"""`flwr run .` from the tests: a private Flower home, private ports, and an end to every process.

The Flower CLI lazily starts a *detached* local SuperLink (`flower-superlink --simulation`, which
spawns `flower-superexec` and, per run, `flwr-simulation` with Ray) that outlives `flwr run`.
Every process a test starts gets a marker in its environment (inherited by Flower's and Ray's
children); :func:`flower_env` ends each marked process (by process id / process group id) in a
`finally`, whatever happened, and then checks that none is left.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from server.run.runlog import read_metrics

REPO = Path(__file__).resolve().parents[1]
WEIGHTS = REPO / "client" / "assets" / "base-model" / "model.safetensors"
BIN_DIR = Path(sys.executable).parent  # the venv's bin: flwr, flower-superlink, ray
FLWR = BIN_DIR / ("flwr.exe" if os.name == "nt" else "flwr")
MARKER = "FEDLORA_FLWR_SIM_TEST"

# A small federation: 3 local steps on 32 short examples per node.
SMALL_RUN = ("local-steps=3", "synth-train-examples=32", "synth-eval-examples=16", "max-length=64")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _environ(pid: int) -> dict[str, str]:
    """The environment a process was started with ({} if unreadable or gone)."""
    try:
        import psutil

        return dict(psutil.Process(pid).environ())
    except ImportError:
        pass
    except Exception:  # gone, zombie, access denied
        return {}
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return {}
    pairs = (item.split(b"=", 1) for item in raw.split(b"\0") if b"=" in item)
    return {k.decode(errors="replace"): v.decode(errors="replace") for k, v in pairs}


def _all_pids() -> list[int]:
    try:
        import psutil

        return list(psutil.pids())
    except ImportError:
        return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def marked_pids(token: str) -> list[int]:
    """Every live process started (directly or not) by this test: its env carries our token."""
    me = os.getpid()
    return [pid for pid in _all_pids() if pid != me and _environ(pid).get(MARKER) == token]


def _signal_all(pids: list[int], sig: int) -> None:
    own_group = os.getpgrp()
    for pid in pids:
        with contextlib.suppress(OSError):
            pgid = os.getpgid(pid)
            # A group is ours to end only if its leader is one of our processes.
            if pgid == pid and pgid != own_group:
                os.killpg(pgid, sig)
        with contextlib.suppress(OSError):
            os.kill(pid, sig)


def end_processes(token: str, grace_s: float = 10.0) -> list[int]:
    """SIGTERM every marked process (and the groups they lead), SIGKILL what is left."""
    pids = marked_pids(token)
    if not pids:
        return []
    _signal_all(pids, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and marked_pids(token):
        time.sleep(0.2)
    left = marked_pids(token)
    if left:
        _signal_all(left, signal.SIGKILL)
    return pids


@contextlib.contextmanager
def flower_env(tmp_path: Path, extra: Mapping[str, str] | None = None) -> Iterator[dict[str, str]]:
    """The environment for `flwr` and everything it starts; every marked process ended after."""
    token = uuid.uuid4().hex
    home = tmp_path / "flwr-home"
    home.mkdir()
    env = {
        **os.environ,
        "FLWR_HOME": str(home),
        "FLWR_TELEMETRY_ENABLED": "0",
        "FLWR_DISABLE_UPDATE_CHECK": "1",
        # Otherwise the SuperExec `uv sync`s [project].dependencies into a fresh env for every
        # run (from PyPI: a multi-GB CUDA torch, ~40 s even from a warm cache) instead of using
        # this environment, where fedlora and its CPU torch are installed.
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
        # Private ports: never hand the run to a SuperLink someone else started on 39091/39093.
        "FLWR_LOCAL_SUPERLINK_HTTP_API_PORT": str(free_port()),
        "FLWR_LOCAL_CONTROL_API_PORT": str(free_port()),
        "PATH": f"{BIN_DIR}{os.pathsep}{os.environ.get('PATH', '')}",
        "PYTHONUNBUFFERED": "1",
        **(extra or {}),
        MARKER: token,
    }
    try:
        yield env
    finally:
        end_processes(token)
    # Reached only when the body passed (a failure is not masked by this check).
    survivors = marked_pids(token)
    assert not survivors, f"processes {survivors} of the Flower simulation survived cleanup"


def flwr(args: list[str], env: dict[str, str], cwd: Path, timeout: float) -> tuple[int, str]:
    proc = subprocess.Popen(
        [str(FLWR), *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(OSError):
            os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail(f"`flwr {args[0]}` did not finish within {timeout:.0f} s:\n{out[-6000:]}")
    return proc.returncode, out


def flwr_run(
    env: dict[str, str],
    cwd: Path,
    *,
    run_config: str,
    timeout: float,
    connection: str = "",
    federation_config: str = "",
) -> str:
    """`flwr run REPO [CONNECTION] --stream`; fails the test unless the run ended
    `finished:completed`. ``connection`` names one in ``$FLWR_HOME/config.toml`` (default: the
    local SuperLink); ``federation_config`` overrides its simulation options."""
    assert FLWR.is_file(), f"{FLWR} not found: install the project (`pip install -e .`)"
    target = [connection] if connection else []
    args = ["run", str(REPO), *target, "--stream", "--run-config", run_config]
    if federation_config:
        args += ["--federation-config", federation_config]
    rc, out = flwr(args, env, cwd=cwd, timeout=timeout)
    assert rc == 0, f"`flwr run` exited with {rc}:\n{out[-6000:]}"
    match = re.search(r"Successfully started run (\d+)", out)
    assert match, f"`flwr run` did not start a run:\n{out[-6000:]}"
    # `flwr run --stream` exits 0 even when the run fails: ask the SuperLink how it ended.
    listing_args = ["list", *target, "--run-id", match.group(1), "--format", "json"]
    rc, listing = flwr(listing_args, env, cwd=cwd, timeout=60)
    assert rc == 0, listing
    status = json.loads(listing[listing.index("{") :])["runs"][0]["status"]
    assert status == "finished:completed", f"run ended {status!r}:\n{out[-6000:]}"
    return out


def only_run(run_root: Path) -> tuple[Path, list[dict[str, Any]]]:
    """The one run folder under ``run_root`` and its `metrics.jsonl` records."""
    run_dirs = [d for d in run_root.iterdir() if d.is_dir()]
    assert len(run_dirs) == 1, f"expected one run folder, found {run_dirs}"
    return run_dirs[0], read_metrics(run_dirs[0])

"""`flwr run .` end to end: Flower's own simulation engine (local SuperLink + Ray) runs the app.

The Flower CLI lazily starts a *detached* local SuperLink (`flower-superlink --simulation`, which
spawns `flower-superexec` and, per run, `flwr-simulation` with Ray) that outlives `flwr run`. The
test gives every process it starts a private FLWR_HOME and a marker in its environment, and ends
each of them (by process id / process group id) in a `finally`, whatever happened.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from client.settings import parse_ranks
from common.config import DEFAULT_RUN_CONFIG

REPO = Path(__file__).resolve().parents[2]
WEIGHTS = REPO / "client" / "assets" / "base-model" / "model.safetensors"
BIN_DIR = Path(sys.executable).parent  # the venv's bin: flwr, flower-superlink, flwr-simulation
FLWR = BIN_DIR / ("flwr.exe" if os.name == "nt" else "flwr")

NUM_NODES = 2
ROUNDS = 2
TIMEOUT_S = 300.0  # the whole `flwr run`; a healthy run takes ~35 s on 2 CPU cores
MARKER = "FEDLORA_FLWR_SIM_TEST"


def _free_port() -> int:
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


def _marked_pids(token: str) -> list[int]:
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


def _end_processes(token: str, grace_s: float = 10.0) -> list[int]:
    """SIGTERM every marked process (and the groups they lead), SIGKILL what is left."""
    pids = _marked_pids(token)
    if not pids:
        return []
    _signal_all(pids, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and (left := _marked_pids(token)):
        time.sleep(0.2)
    left = _marked_pids(token)
    if left:
        _signal_all(left, signal.SIGKILL)
    return pids


@contextlib.contextmanager
def _flower_env(tmp_path: Path) -> Iterator[dict[str, str]]:
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
        "FLWR_LOCAL_SUPERLINK_HTTP_API_PORT": str(_free_port()),
        "FLWR_LOCAL_CONTROL_API_PORT": str(_free_port()),
        "PATH": f"{BIN_DIR}{os.pathsep}{os.environ.get('PATH', '')}",
        "PYTHONUNBUFFERED": "1",
        MARKER: token,
    }
    try:
        yield env
    finally:
        _end_processes(token)
    # Reached only when the body passed (a failure is not masked by this check).
    survivors = _marked_pids(token)
    assert not survivors, f"processes {survivors} of the Flower simulation survived cleanup"


def _flwr(args: list[str], env: dict[str, str], cwd: Path, timeout: float) -> tuple[int, str]:
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


@pytest.mark.slow
@pytest.mark.skipif(os.name == "nt", reason="process-group cleanup is POSIX-only")
@pytest.mark.skipif(
    not WEIGHTS.is_file(), reason=f"embedded base model not generated yet ({WEIGHTS} is missing)"
)
def test_flwr_run_local_simulation(tmp_path: Path) -> None:
    assert FLWR.is_file(), f"{FLWR} not found: install the project (`pip install -e .`)"
    run_root = tmp_path / "runs"
    run_config = " ".join(
        [
            f"num-server-rounds={ROUNDS}",
            "local-steps=3",
            "synth-train-examples=32",
            "synth-eval-examples=16",
            "max-length=64",
            f"min-nodes={NUM_NODES}",
            f"run-dir='{run_root}'",
        ]
    )
    started = time.monotonic()
    with _flower_env(tmp_path) as env:
        rc, out = _flwr(
            [
                "run",
                str(REPO),
                "--stream",
                "--federation-config",
                f"num-supernodes={NUM_NODES} client-resources-num-cpus=1",
                "--run-config",
                run_config,
            ],
            env,
            cwd=tmp_path,
            timeout=TIMEOUT_S,
        )
        run_s = time.monotonic() - started
        assert rc == 0, f"`flwr run` exited with {rc}:\n{out[-6000:]}"
        match = re.search(r"Successfully started run (\d+)", out)
        assert match, f"`flwr run` did not start a run:\n{out[-6000:]}"
        # `flwr run --stream` exits 0 even when the run fails: ask the SuperLink how it ended.
        rc, listing = _flwr(
            ["list", "--run-id", match.group(1), "--format", "json"], env, cwd=tmp_path, timeout=60
        )
        assert rc == 0, listing
        status = json.loads(listing[listing.index("{") :])["runs"][0]["status"]
        assert status == "finished:completed", f"run ended {status!r}:\n{out[-6000:]}"
    total_s = time.monotonic() - started
    print(
        f"\n`flwr run`: {ROUNDS} rounds x {NUM_NODES} nodes in {run_s:.1f} s "
        f"({total_s:.1f} s with cleanup)"
    )

    run_dirs = [d for d in run_root.iterdir() if d.is_dir()]
    assert len(run_dirs) == 1, f"expected one run folder, found {run_dirs}"
    run_dir = run_dirs[0]
    lines = (run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    records = [json.loads(line) for line in lines if line.strip()]
    assert [r["round"] for r in records] == list(range(ROUNDS + 1))

    for record in records:
        nodes = record["nodes"]
        assert len(nodes) == NUM_NODES, f"round {record['round']}: nodes {sorted(nodes)}"
        for name, node in nodes.items():
            loss = node.get("eval_loss")
            assert isinstance(loss, float) and math.isfinite(loss), (record["round"], name, loss)

    # Partitions 0 and 1 train the first two ranks of the default `lora-ranks` (4 and 8);
    # FLoRA stacks them, so the global rank after round 1 is their sum.
    default_ranks = parse_ranks(str(DEFAULT_RUN_CONFIG["lora-ranks"]))[:NUM_NODES]
    assert default_ranks == (4, 8)
    round1 = records[1]
    assert sorted(n["rank"] for n in round1["nodes"].values()) == sorted(default_ranks)
    assert round1["global_rank"] == sum(default_ranks) == 4 + 8

    adapter = run_dir / "adapter"
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        assert (adapter / name).is_file(), f"{adapter / name} missing"
        assert (adapter / name).stat().st_size > 0

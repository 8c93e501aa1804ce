"""`flwr run .` on a Ray cluster of two processes: a head and a worker node started with
`ray start` on this machine (docs/scaling.md "Simulation on a Ray cluster").

Each Ray node offers one CPU and each simulated node asks for one (`client-resources-num-cpus=1`),
so Flower's actor pool holds one `ClientAppActor` per Ray node and the messages run on both (the
resources are set in a connection of `$FLWR_HOME/config.toml`, as docs/scaling.md shows). The
simulation finds the cluster through `RAY_ADDRESS`, which reaches `flwr-simulation` through the
local SuperLink that `flwr run` starts.

Where each message ran comes from Ray, not from the app (nothing is added to what nodes send):
Ray's timeline (`ray.timeline()`) lists every actor call, `run` being one Flower message, with
the id of the worker process that executed it; each Ray node keeps its workers' logs under its
own `--temp-dir`, named by worker id and PID, so a worker id names its Ray node.

Never `ray stop`: it stops every Ray process on the machine, other people's simulations too. Each
`ray start --block` runs in its own process group and is ended by group id (common/daemon.py);
then every process carrying the test's marker is ended and the test checks that none is left
(tests/flower_harness.py). Ray's servers listen on the machine's address, not only on loopback
(Ray replaces 127.0.0.1 by it); the ports are free ones picked by the test or by Ray.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from common import daemon
from tests.flower_harness import (
    BIN_DIR,
    SMALL_RUN,
    WEIGHTS,
    flower_env,
    flwr_run,
    free_port,
    only_run,
)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="process groups, /tmp"),
    pytest.mark.skipif(not WEIGHTS.is_file(), reason=f"embedded base model missing ({WEIGHTS})"),
]

NUM_NODES = 4
ROUNDS = 1
MESSAGES = NUM_NODES * (ROUNDS + ROUNDS + 1)  # a train per round, an evaluate per round and at 0
RAY_NODES = ("head", "worker")
TIMEOUT_S = 300.0  # the whole `flwr run`; a healthy run takes ~35 s on 2 CPU cores
START_S = 120.0  # one `ray start`; ~6 s on 2 CPU cores

# The Flower connection of docs/scaling.md: a local SuperLink whose simulated nodes ask for one CPU
# each (Flower's default is two), so that one fits on each Ray node.
CONNECTIONS = f"""[superlink]
default = "local"

[superlink.local]
address = ":local:"

[superlink.ray-cluster]
address = ":local:"
options.num-supernodes = {NUM_NODES}
options.backend.client-resources.num-cpus = 1
options.backend.client-resources.num-gpus = 0.0
"""

# Run with the cluster's RAY_ADDRESS: `nodes` waits (bounded) until both Ray nodes are alive and
# prints them; `runs` prints, per worker id, how many `run` calls Ray's timeline recorded.
PROBE = """
import collections, json, sys, time
import ray
ray.init(logging_level="ERROR", log_to_driver=False)
if sys.argv[1] == "nodes":
    deadline = time.monotonic() + float(sys.argv[2])
    while len(alive := [n for n in ray.nodes() if n["Alive"]]) < 2 and time.monotonic() < deadline:
        time.sleep(0.5)
    print(json.dumps({n["NodeID"]: [n["RayletSocketName"], n["Resources"].get("CPU")]
                      for n in alive}))
else:
    names = ("run", "task::ClientAppActor.run")
    runs = collections.Counter(e["tid"].split(":", 1)[1] for e in ray.timeline()
                               if e["tid"].startswith("worker:") and e["name"] in names)
    print(json.dumps(runs))
"""


def _wait_for_file(path: Path, proc: subprocess.Popen[bytes], log: Path) -> str:
    """The text of ``path`` once ``ray start`` has written it; fails if the command exits."""
    deadline = time.monotonic() + START_S
    while not (path.is_file() and path.read_text().strip()):
        if proc.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"`ray start` did not come up (exit {proc.poll()}):\n{log.read_text()}")
        time.sleep(0.2)
    return path.read_text().strip()


@contextlib.contextmanager
def ray_cluster(env: dict[str, str], logs: Path) -> Iterator[tuple[str, dict[str, Path]]]:
    """A head and a worker Ray node, one CPU each: (the head's address, name -> temp dir)."""
    # Short: Ray puts its unix sockets in the temp dir (at most 107 characters a path).
    root = Path(tempfile.mkdtemp(prefix="fl-ray-", dir="/tmp"))
    dirs = {name: root / name for name in RAY_NODES}
    ray_env = {**env, "RAY_USAGE_STATS_ENABLED": "0"}
    common = ["--block", "--num-cpus", "1", "--memory", str(2 << 30),
              "--object-store-memory", str(100 << 20), "--disable-usage-stats"]  # fmt: skip
    nodes: list[subprocess.Popen[bytes]] = []
    address = ""
    try:
        for name in RAY_NODES:
            if name == "head":
                role = ["--head", "--port", str(free_port()), "--include-dashboard", "false",
                        "--ray-client-server-port", str(free_port())]  # fmt: skip
            else:
                role = ["--address", address]
            argv = [str(BIN_DIR / "ray"), "start", *role, *common, "--temp-dir", str(dirs[name])]
            log = logs / f"ray-{name}.log"
            nodes.append(daemon.spawn(argv, env=ray_env, log_path=log))
            # Written by `ray start` once its node runs: the cluster's address (GCS host:port).
            address = _wait_for_file(dirs[name] / "ray_current_cluster", nodes[-1], log)
        yield address, dirs
    finally:
        for proc in reversed(nodes):
            daemon.stop(proc)
        shutil.rmtree(root, ignore_errors=True)


def _probe(mode: str, env: dict[str, str], cwd: Path) -> dict[str, Any]:
    script = cwd / "ray_probe.py"
    script.write_text(PROBE)
    done = subprocess.run(
        [sys.executable, str(script), mode, "60"], env=env, cwd=cwd, capture_output=True,
        text=True, timeout=180, check=False,
    )  # fmt: skip
    assert done.returncode == 0, f"Ray probe `{mode}` failed:\n{done.stderr[-4000:]}"
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def _worker_node(dirs: dict[str, Path]) -> dict[str, tuple[str, int]]:
    """worker id -> (the Ray node whose temp dir holds its log, its PID)."""
    found: dict[str, tuple[str, int]] = {}
    for name, temp in dirs.items():
        for log in temp.glob("session_*/logs/python-core-worker-*.log"):
            if match := re.fullmatch(r"python-core-worker-([0-9a-f]+)_(\d+)\.log", log.name):
                found[match.group(1)] = (name, int(match.group(2)))
    return found


def test_flwr_run_on_a_two_process_ray_cluster(tmp_path: Path) -> None:
    run_root = tmp_path / "runs"
    run_config = " ".join(
        [f"num-server-rounds={ROUNDS}", *SMALL_RUN, f"min-nodes={NUM_NODES}",
         f"run-dir='{run_root}'"]
    )  # fmt: skip
    started = time.monotonic()
    with flower_env(tmp_path) as env, ray_cluster(env, tmp_path) as (address, dirs):
        env = {**env, "RAY_ADDRESS": address}
        cluster_s = time.monotonic() - started
        nodes = _probe("nodes", env, tmp_path)  # node id -> [raylet socket, CPUs]
        where = sorted(
            (name, cpus) for socket, cpus in nodes.values()
            for name in RAY_NODES if dirs[name] in Path(socket).parents
        )  # fmt: skip
        assert where == [("head", 1.0), ("worker", 1.0)], f"the cluster's nodes: {nodes}"

        config_toml = Path(env["FLWR_HOME"]) / "config.toml"
        config_toml.write_text(CONNECTIONS, encoding="utf-8")
        flwr_run(env, tmp_path, connection="ray-cluster", run_config=run_config, timeout=TIMEOUT_S)
        run_s = time.monotonic() - started - cluster_s
        runs = _probe("runs", env, tmp_path)
        workers = _worker_node(dirs)
    total_s = time.monotonic() - started

    placement: dict[str, Counter[int]] = {name: Counter() for name in RAY_NODES}
    for worker_id, count in runs.items():
        assert worker_id in workers, f"worker {worker_id} has no log under {sorted(dirs.values())}"
        name, pid = workers[worker_id]
        placement[name][pid] += count
    print(
        f"\nRay cluster up in {cluster_s:.1f} s; `flwr run` ({ROUNDS} round(s) x {NUM_NODES} "
        f"nodes) {run_s:.1f} s; {total_s:.1f} s in all with cleanup. Messages per Ray node "
        "(PID: count): " + "; ".join(f"{name} {dict(pids)}" for name, pids in placement.items())
    )
    assert all(placement[name] for name in RAY_NODES), f"messages did not run on both: {placement}"
    assert sum(sum(pids.values()) for pids in placement.values()) == MESSAGES, placement

    _, records = only_run(run_root)
    assert [r["round"] for r in records] == list(range(ROUNDS + 1))
    for record in records:
        assert len(record["nodes"]) == NUM_NODES, (record["round"], sorted(record["nodes"]))
    # FLoRA stacks every node's factors: the global rank after round 1 is the sum of the ranks.
    assert records[1]["global_rank"] == sum(n["rank"] for n in records[1]["nodes"].values())

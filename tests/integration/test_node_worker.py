"""The deployed node's long-lived worker, with real processes on loopback (client/node/worker.py).

- during a 3-round run each node's torch-holding process (its worker) keeps its PID, the node
  log has one record line per message, and the global adapter is bitwise the in-process one;
- a worker killed mid-round is started again by ``fedlora node start`` and the run completes;
- SIGKILL of ``fedlora node start`` or of ``fedlora server start`` leaves no process behind.
"""

from __future__ import annotations

import os
import re
import signal
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import psutil
import pytest
from safetensors.numpy import load_file

from tests.deploy_harness import Federation, federation_at, run_folder, run_records, wait_for
from tests.integration.test_reliability_deployment import Follow

pytestmark = pytest.mark.slow

NODES = {"hospital-a": ("hospital-cardiology", 4), "bank-b": ("bank-transactions", 8)}
QUICK = ("local-steps=4", "synth-eval-examples=16", "batch-size=4", "min-nodes=2")
RECORD = re.compile(r"\[fedlora\] round (\d+) (train|evaluate): ([\d.]+) s \(load ([\d.]+)")


@pytest.fixture(scope="module")
def federation(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Federation]:
    with federation_at(tmp_path_factory.mktemp("worker")) as fed:
        for name, (data, rank) in NODES.items():
            fed.join_and_start(name, data, rank)
        fed.wait_online(*NODES)
        yield fed


def worker_pid(federation: Federation, name: str) -> int | None:
    """The PID of the node's worker (the process holding torch), or None while there is none."""
    proc = federation.daemons.procs[name]
    for child in psutil.Process(proc.pid).children(recursive=True):
        try:
            if child.status() != psutil.STATUS_ZOMBIE and "client.node.worker" in child.cmdline():
                return child.pid
        except psutil.Error:
            continue
    return None


def records(federation: Federation, name: str) -> list[tuple[int, str, float, float]]:
    """(round, kind, seconds, load seconds) of each record line in the node's log."""
    found = RECORD.findall(federation.daemons.log(name))
    return [(int(r), kind, float(s), float(load)) for r, kind, s, load in found]


def test_each_node_keeps_one_worker_and_matches_the_in_process_run(
    federation: Federation, tmp_path: Path
) -> None:
    wait_for(lambda: all(worker_pid(federation, n) for n in NODES), 60, "workers started")
    pids = {name: worker_pid(federation, name) for name in NODES}
    seen: list[dict[str, int | None]] = []
    follow = Follow("--dir", federation.fed, "--rounds", "3",
                    *[a for item in QUICK for a in ("--config", item)])  # fmt: skip
    for server_round in range(4):
        follow.wait_line(f"[fedlora] round {server_round}/3")
        seen.append({name: worker_pid(federation, name) for name in NODES})
    code, output = follow.finish()
    assert code == 0, output[-3000:]
    assert seen == [pids] * 4  # one torch-holding process per node for the whole run
    for name in NODES:
        lines = records(federation, name)
        kinds = [(r, kind) for r, kind, _, _ in lines]
        assert kinds.count((1, "train")) == 1 and kinds.count((3, "evaluate")) == 1, kinds
        assert all(load == 0.0 for _, _, _, load in lines[1:])  # the base model loaded once
    _compare_with_in_process(federation, Path(run_folder(output)), tmp_path)


def _compare_with_in_process(federation: Federation, run_dir: Path, tmp_path: Path) -> None:
    """The same nodes (names, data, ranks) and seeds in one process: the same adapter, bitwise."""
    from server.simulation.simulate import simulate

    nodes = [{"data-path": str(federation.root / "data" / data), "node-name": name,
              "lora-rank": rank} for name, (data, rank) in NODES.items()]  # fmt: skip
    config = dict(item.split("=") for item in QUICK)
    outcome = simulate(
        num_nodes=len(NODES),
        run_config={
            **{k: int(v) for k, v in config.items()},
            "num-server-rounds": 3,
            "run-dir": str(tmp_path / "runs"),
        },
        node_configs=nodes,  # type: ignore[arg-type]
        echo=lambda _: None,
        state_dir=tmp_path / "state",
    )
    assert outcome.stopped is None and outcome.adapter_dir is not None
    reference = load_file(str(outcome.adapter_dir / "adapter_model.safetensors"))
    deployed = load_file(str(run_dir / "adapter" / "adapter_model.safetensors"))
    assert reference.keys() == deployed.keys()
    for key, value in reference.items():
        np.testing.assert_array_equal(deployed[key], value, err_msg=key)


def test_a_worker_killed_mid_round_is_restarted_and_the_run_completes(
    federation: Federation,
) -> None:
    name = "bank-b"
    before = len(records(federation, name))
    old = worker_pid(federation, name)
    assert old is not None
    # Training long enough that the kill lands inside it; one reply is enough for a round.
    config = ("local-steps=400", "synth-eval-examples=16", "batch-size=4", "min-nodes=2",
              "min-replies=1")  # fmt: skip
    follow = Follow("--dir", federation.fed, "--rounds", "2",
                    *[a for item in config for a in ("--config", item)])  # fmt: skip
    follow.wait_line("[fedlora] round 0/2")
    received = federation.daemons.log(name).count("Receiving: train message")
    wait_for(lambda: federation.daemons.log(name).count("Receiving: train message") > received,
             120, "bank-b received round 1")  # fmt: skip
    # Mid-training, whatever the machine's speed: the worker has spent a second of CPU time on
    # this message (an idle worker spends almost none) and its round-1 record is not written.
    worker = psutil.Process(old)
    idle = sum(worker.cpu_times()[:2])
    wait_for(lambda: sum(worker.cpu_times()[:2]) > idle + 1.0, 120, "bank-b training round 1",
             every_s=0.05)  # fmt: skip
    assert (1, "train") not in [(r, k) for r, k, _, _ in records(federation, name)[before:]]
    os.kill(old, signal.SIGKILL)
    code, output = follow.finish()
    assert code == 0, output[-3000:]
    new = worker_pid(federation, name)
    assert new is not None and new != old
    assert "the node worker stopped (exit code -9)" in federation.daemons.log(name)
    trained = [(r, kind) for r, kind, _, _ in records(federation, name)[before:]]
    assert (2, "train") in trained and (1, "train") not in trained  # killed in 1, back in 2
    rounds = run_records(output)
    assert rounds[1]["nodes"].get(name, {}).get("train_loss") is None  # type: ignore[attr-defined]
    assert rounds[2]["nodes"][name]["train_loss"] is not None  # type: ignore[index]


def _sigkill_leaves_nothing(federation: Federation, name: str) -> None:
    """SIGKILL ``fedlora ... start`` alone (none of our code runs): its whole tree ends."""
    proc = federation.daemons.procs.pop(name)
    family = psutil.Process(proc.pid).children(recursive=True)
    assert family, f"{name} runs no daemon"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()

    def ended() -> bool:
        return not [p for p in family if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]

    wait_for(ended, 15, f"every process under `fedlora {name}` ended")


def test_sigkill_of_node_start_leaves_no_process(federation: Federation) -> None:
    _sigkill_leaves_nothing(federation, "hospital-a")


def test_sigkill_of_server_start_leaves_no_process(federation: Federation) -> None:
    _sigkill_leaves_nothing(federation, "server")

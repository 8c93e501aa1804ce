"""Two node processes on one state folder race for a budget that fits one release: exactly one
trains, and the ledger holds exactly that release (client/privacy/ledger.py, ``locked``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from client.privacy.ledger import LEDGER_FILE, epsilon_of

SIGMA = 2.0
# One process: plan + guard + reserve (begin_round), "train" for a while, confirm (commit).
NODE = """
import sys, time
from pathlib import Path
from client.privacy.round import BudgetExceededError, begin_round, commit
from client.settings import TrainConfig

state, go, budget = Path(sys.argv[1]), Path(sys.argv[2]), float(sys.argv[3])
print("ready", flush=True)
while not go.exists():
    time.sleep(0.01)
try:
    plan = begin_round({"state-dir": str(state), "dp-max-epsilon": budget},
                       {"privacy": "dp-lora", "dp-noise-multiplier": SIGMA, "num-server-rounds": 1},
                       node_name="n", texts=["a record", "another"],
                       train=TrainConfig(server_round=1))
except BudgetExceededError:
    print("declined", flush=True)
    sys.exit(0)
time.sleep(1.0)  # training: long enough that the other process reaches its guard meanwhile
commit(plan)
print("trained", flush=True)
""".replace("SIGMA", repr(SIGMA))


def test_two_processes_on_one_state_folder_never_both_pass_the_guard(tmp_path: Path) -> None:
    one = epsilon_of([(SIGMA, 1.0, 1)], delta=1e-5)
    budget = (one + epsilon_of([(SIGMA, 1.0, 2)], delta=1e-5)) / 2  # one release fits, not two
    go = tmp_path / "go"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    nodes = [
        subprocess.Popen([sys.executable, "-c", NODE, str(tmp_path / "state"), str(go),
                          str(budget)], stdout=subprocess.PIPE, text=True, env=env)
        for _ in range(2)
    ]  # fmt: skip
    try:
        for node in nodes:  # both imported and waiting: then start them at once
            assert node.stdout is not None and node.stdout.readline().strip() == "ready"
        go.touch()
        outcomes = sorted(node.communicate(timeout=120)[0].strip() for node in nodes)
    finally:
        for node in nodes:
            if node.poll() is None:
                node.kill()
                node.wait()
    assert outcomes == ["declined", "trained"]
    ledger = json.loads((tmp_path / "state" / LEDGER_FILE).read_text())
    assert [(r["mode"], r["status"]) for r in ledger["releases"]] == [("dp-lora", "confirmed")]
    assert abs(ledger["epsilon"] - one) < 1e-9

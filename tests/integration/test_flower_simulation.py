"""`flwr run .` end to end: Flower's own simulation engine (local SuperLink + Ray) runs the app.

The processes it starts and their cleanup: tests/flower_harness.py.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path

import pytest

from client.settings import parse_ranks
from common.config import DEFAULT_RUN_CONFIG
from tests.flower_harness import SMALL_RUN, WEIGHTS, flower_env, flwr_run, only_run

NUM_NODES = 2
ROUNDS = 2
TIMEOUT_S = 300.0  # the whole `flwr run`; a healthy run takes ~35 s on 2 CPU cores


@pytest.mark.slow
@pytest.mark.skipif(os.name == "nt", reason="process-group cleanup is POSIX-only")
@pytest.mark.skipif(
    not WEIGHTS.is_file(), reason=f"embedded base model not generated yet ({WEIGHTS} is missing)"
)
def test_flwr_run_local_simulation(tmp_path: Path) -> None:
    run_root = tmp_path / "runs"
    run_config = " ".join(
        [f"num-server-rounds={ROUNDS}", *SMALL_RUN, f"min-nodes={NUM_NODES}",
         f"run-dir='{run_root}'"]
    )  # fmt: skip
    started = time.monotonic()
    with flower_env(tmp_path) as env:
        flwr_run(
            env,
            tmp_path,
            federation_config=f"num-supernodes={NUM_NODES} client-resources-num-cpus=1",
            run_config=run_config,
            timeout=TIMEOUT_S,
        )
        run_s = time.monotonic() - started
    total_s = time.monotonic() - started
    print(
        f"\n`flwr run`: {ROUNDS} rounds x {NUM_NODES} nodes in {run_s:.1f} s "
        f"({total_s:.1f} s with cleanup)"
    )

    run_dir, records = only_run(run_root)
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

"""A small federation with server momentum: the run exports the global adapter alone, and the
checkpoint carries the momentum beside it (the export once took the checkpoint's arrays and
failed on the `momentum/` keys at the end of the run)."""

from __future__ import annotations

from pathlib import Path

from safetensors import safe_open

from common.config import DEFAULT_RUN_CONFIG
from server.simulation.simulate import simulate


def test_a_momentum_run_exports_the_global_adapter_and_checkpoints_the_momentum(
    tmp_path: Path,
) -> None:
    config = {**DEFAULT_RUN_CONFIG, "strategy": "flora", "server-momentum": 0.5,
              "lora-ranks": "2,4", "num-server-rounds": 2, "local-steps": 2, "batch-size": 4,
              "max-length": 48, "synth-train-examples": 16, "synth-eval-examples": 8,
              "run-dir": str(tmp_path)}  # fmt: skip
    outcome = simulate(num_nodes=2, run_config=config, num_threads=1, echo=lambda _: None)
    assert outcome.stopped is None and outcome.adapter_dir is not None
    (exported,) = outcome.adapter_dir.glob("*.safetensors")
    with safe_open(str(exported), "np") as handle:
        keys = set(handle.keys())
    assert keys and all(k.endswith((".lora_A.weight", ".lora_B.weight")) for k in keys)
    assert not any("momentum" in k for k in keys)
    with safe_open(str(outcome.run_dir / "checkpoint.safetensors"), "np") as handle:
        saved = set(handle.keys())
    assert {k.removeprefix("momentum/") for k in saved if k.startswith("momentum/")} == keys

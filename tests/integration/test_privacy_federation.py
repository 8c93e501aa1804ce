"""Whole federations with privacy on the node, in this process: the budget guard, the ledger
across two runs on one state folder, DP-SGD learning on the default federation, DP-LoRA's
adapter loading in peft."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from peft import PeftModel

from client.model.loading import load_base
from client.privacy.ledger import epsilon_of
from client.privacy.round import COUNT_NOISE_MULTIPLIER
from server.run.runlog import read_metrics
from server.simulation.simulate import simulate

# batch-size far above ñ = 16 + N(0, 20²): q = 1 whatever ñ is, so ε is known before the run
SIGMA, BATCH, EXAMPLES, STEPS = 2.0, 400, 16, 2
Q = 1.0
SMALL = {
    "local-steps": STEPS,
    "batch-size": BATCH,
    "max-length": 32,
    "synth-train-examples": EXAMPLES,
    "synth-eval-examples": 4,
    "lora-ranks": "2,3",
    "min-nodes": 1,
    "privacy": "dp-sgd",
    "dp-noise-multiplier": SIGMA,
}


def _eps(rounds: int) -> float:
    """ε per record after ``rounds`` rounds: the noised count, then the DP-SGD steps."""
    return epsilon_of([(COUNT_NOISE_MULTIPLIER, 1.0, 1), (SIGMA, Q, STEPS * rounds)], delta=1e-5)


def _run(tmp_path: Path, rounds: int, budget: float, lines: list[str]):  # type: ignore[no-untyped-def]
    return simulate(
        num_nodes=2,
        run_config={**SMALL, "num-server-rounds": rounds, "run-dir": str(tmp_path / "runs")},
        node_configs=[{"dp-max-epsilon": budget}, {}],
        num_threads=1,
        echo=lines.append,
        state_dir=tmp_path / "state",
    )


def test_budget_guard_stops_a_node_and_the_ledger_carries_into_the_next_run(
    tmp_path: Path,
) -> None:
    budget = (_eps(2) + _eps(3)) / 2  # room for two rounds, not three
    lines: list[str] = []
    outcome = _run(tmp_path, 3, budget, lines)
    assert outcome.stopped is None and outcome.adapter_dir is not None
    records = read_metrics(outcome.run_dir)
    guarded, other = "hospital-cardiology", "hospital-pediatrics"
    for rnd in (1, 2):
        node = records[rnd]["nodes"][guarded]
        assert node["dp_epsilon_record"] == pytest.approx(_eps(rnd), abs=1e-3)
        assert node["dp_steps"] == STEPS * rnd and node["dp_sample_rate"] == Q
        assert node["dp_mode"] == "dp-sgd" and node["dp_delta"] == 1e-5
    stopped = records[3]["nodes"][guarded]
    assert stopped["rank"] is None and "privacy budget" in stopped["rejected"]
    assert records[3]["aggregated"]  # the run went on with the other node
    assert records[3]["nodes"][other]["dp_epsilon_record"] == pytest.approx(_eps(3), abs=1e-3)
    summary = "\n".join(lines)
    assert f"{guarded}: not used since round 3" in summary and "privacy budget" in summary
    assert f"{_eps(3):.3f} per record, — per institution" in summary
    assert (tmp_path / "state" / guarded / "privacy-ledger.json").is_file()

    again = _run(tmp_path, 1, budget, lines)  # the same state folder: the same data sets
    record = read_metrics(again.run_dir)[1]
    assert "privacy budget" in record["nodes"][guarded]["rejected"]  # refuses at once
    assert record["nodes"][other]["dp_epsilon_record"] == pytest.approx(_eps(4), abs=1e-3)
    assert record["nodes"][other]["dp_steps"] == STEPS * 4


def test_without_state_dir_each_simulation_keeps_its_ledgers_in_its_run_folder(
    tmp_path: Path,
) -> None:
    config = {**SMALL, "num-server-rounds": 1, "run-dir": str(tmp_path / "runs")}
    outcome = simulate(num_nodes=1, run_config=config, num_threads=1, echo=lambda _: None)
    assert (outcome.run_dir / "state" / "hospital-cardiology" / "privacy-ledger.json").is_file()


def test_dp_lora_federation_exports_an_adapter_that_peft_loads(tmp_path: Path) -> None:
    config = {**SMALL, "num-server-rounds": 1, "run-dir": str(tmp_path / "runs"),
              "privacy": "dp-lora", "dp-noise-multiplier": 2.0, "dp-clip-norm": 0.5}  # fmt: skip
    outcome = simulate(num_nodes=2, run_config=config, num_threads=1, echo=lambda _: None)
    node = read_metrics(outcome.run_dir)[1]["nodes"]["hospital-pediatrics"]
    assert node["dp_mode"] == "dp-lora" and node["dp_sample_rate"] == 1.0
    one = epsilon_of([(2.0, 1.0, 1)], delta=1e-5)
    assert node["dp_epsilon_record"] == pytest.approx(one)
    assert node["dp_epsilon_institution"] == pytest.approx(one)
    assert node["train_loss"] is None  # no loss leaves a node under DP
    assert outcome.adapter_dir is not None
    base, _ = load_base("", device=torch.device("cpu"))
    model = PeftModel.from_pretrained(base, str(outcome.adapter_dir))
    ids = torch.arange(3, 20).unsqueeze(0)
    assert torch.isfinite(model(ids).logits).all()


def test_default_federation_learns_under_dp_sgd_at_epsilon_8(tmp_path: Path) -> None:
    """`fedlora simulate` with privacy: the default nodes, rounds, steps and data."""
    config = {"privacy": "dp-sgd", "dp-target-epsilon": 8.0, "run-dir": str(tmp_path / "runs")}
    outcome = simulate(run_config=config, num_threads=1, echo=lambda _: None)
    records = read_metrics(outcome.run_dir)
    assert len(records) == 4
    for name, node in records[-1]["nodes"].items():
        assert node["dp_epsilon_record"] <= 8.0 and node["train_loss"] is None
        assert node["eval_loss"] < records[0]["nodes"][name]["eval_loss"] - 0.2, name

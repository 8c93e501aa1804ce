"""Checkpoint and resume through ``fedlora simulate``: a run stopped after round k and resumed
ends with the same global adapter as an uninterrupted run, bitwise (CPU, fixed seeds)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from server.cli.main import main
from server.run.checkpoint import (
    CHECKPOINT_FILE,
    CheckpointError,
    load_checkpoint,
    save_checkpoint,
)
from server.run.runlog import read_metrics
from server.simulation.simulate import simulate

QUIET = {"echo": lambda _: None}


def _config(tmp_path: Path, **extra: object) -> dict:
    return {
        "local-steps": 2, "batch-size": 4, "max-length": 48, "synth-train-examples": 16,
        "synth-eval-examples": 8, "lora-ranks": "2,4,3", "run-dir": str(tmp_path / "runs"),
        "node-wait-s": 5.0, **extra,
    }  # fmt: skip


def _adapter(run_dir: Path) -> dict[str, np.ndarray]:
    return load_file(str(run_dir / "adapter" / "adapter_model.safetensors"))


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("resume")
    straight = simulate(run_config=_config(tmp, **{"num-server-rounds": 3}), **QUIET)
    first = simulate(run_config=_config(tmp, **{"num-server-rounds": 1}), **QUIET)
    resumed = simulate(
        run_config={"resume-from": str(first.run_dir), "num-server-rounds": 3}, **QUIET
    )
    assert resumed.run_dir == first.run_dir
    return {"straight": straight.run_dir, "resumed": resumed.run_dir, "tmp": tmp}


def test_a_resumed_run_ends_with_the_uninterrupted_runs_adapter_bitwise(runs) -> None:
    straight, resumed = _adapter(runs["straight"]), _adapter(runs["resumed"])
    assert straight.keys() == resumed.keys()
    for key in straight:
        np.testing.assert_array_equal(straight[key], resumed[key])


def test_a_resumed_run_keeps_one_record_per_round_and_the_checkpoint_moves_on(runs) -> None:
    records = read_metrics(runs["resumed"])
    assert [r["round"] for r in records] == [0, 1, 2, 3]
    straight = read_metrics(runs["straight"])
    assert [r["global_rank"] for r in records] == [r["global_rank"] for r in straight]
    assert load_checkpoint(runs["resumed"]).round == 3
    assert (runs["resumed"] / "metrics.before-resume-1.jsonl").is_file()


def test_a_checkpoint_made_with_other_settings_is_refused_naming_them(runs) -> None:
    with pytest.raises(CheckpointError, match=r"`learning-rate` is 0.01 but .* 0.003"):
        simulate(
            run_config={"resume-from": str(runs["resumed"]), "num-server-rounds": 5,
                        "learning-rate": 0.01}, **QUIET,
        )  # fmt: skip
    with pytest.raises(CheckpointError, match=r"`num-server-rounds` is 3 .* completed 3"):
        simulate(run_config={"resume-from": str(runs["resumed"])}, **QUIET)


def test_a_checkpoint_of_another_base_model_is_refused(runs, tiny_gpt2_dir: Path) -> None:
    with pytest.raises(CheckpointError, match="`base-model` is"):
        simulate(
            run_config={"resume-from": str(runs["resumed"]), "num-server-rounds": 5,
                        "base-model": str(tiny_gpt2_dir)}, **QUIET,
        )  # fmt: skip


def test_cli_resume_of_a_folder_without_checkpoint_is_one_clear_line(tmp_path, capsys) -> None:
    assert main(["simulate", "--resume", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) <= 2 and "`resume-from`" in err and CHECKPOINT_FILE in err


def test_a_round_short_of_min_replies_is_retried_then_stops_cleanly(tmp_path) -> None:
    config = _config(tmp_path, **{"num-server-rounds": 2, "min-replies": 4, "max-round-retries": 1})
    outcome = simulate(run_config=config, **QUIET)
    assert outcome.stopped is not None and "`min-replies` is 4" in outcome.stopped
    last = json.loads((outcome.run_dir / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["round"] == 1 and "stopped" in last and last["retries"] == 1
    assert load_checkpoint(outcome.run_dir).round == 0  # the last good state


def test_a_node_that_never_comes_up_stops_the_run_within_node_wait_s(tmp_path) -> None:
    config = _config(tmp_path, **{"min-nodes": 4, "node-wait-s": 0.5})
    outcome = simulate(num_nodes=3, run_config=config, **QUIET)
    assert outcome.stopped is not None and "`min-nodes` is 4" in outcome.stopped
    assert read_metrics(outcome.run_dir)[-1]["stopped"] == outcome.stopped


def test_a_deployed_runs_checkpoint_resumes_in_simulation_without_its_name_binding(
    tmp_path: Path,
) -> None:
    """A deployed run's settings name its federation's enrolled-nodes map; simulated nodes are
    not enrolled, so resuming that checkpoint in simulation must not refuse them all."""
    first = simulate(run_config=_config(tmp_path, **{"num-server-rounds": 1}), **QUIET)
    enrolled = tmp_path / "enrolled-nodes.json"
    enrolled.write_text(json.dumps({"12345": "hospital-a"}))
    saved = load_checkpoint(first.run_dir)  # as `fedlora run` saves it in deployment
    save_checkpoint(first.run_dir, dataclasses.replace(
        saved, run_config={**saved.run_config, "enrolled-nodes": str(enrolled)}))  # fmt: skip
    resumed = simulate(
        run_config={"resume-from": str(first.run_dir), "num-server-rounds": 2}, **QUIET
    )
    assert resumed.stopped is None
    last = read_metrics(resumed.run_dir)[-1]
    assert all(not node.get("rejected") for node in last["nodes"].values()), last["nodes"]

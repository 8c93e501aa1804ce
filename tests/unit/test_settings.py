"""Typed settings: defaults agree with pyproject, every problem is named at once."""

from __future__ import annotations

import argparse
import tomllib
from pathlib import Path

import pytest

from client.settings import TrainConfig, node_settings
from common.config import DEFAULT_RUN_CONFIG, SettingsError
from server.cli.main import parse_override
from server.run.settings import server_settings

REPO = Path(__file__).resolve().parents[2]


def test_pyproject_run_config_equals_the_defaults() -> None:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert pyproject["tool"]["flwr"]["app"]["config"] == DEFAULT_RUN_CONFIG


def test_defaults_build_the_default_settings() -> None:
    settings = server_settings(DEFAULT_RUN_CONFIG)
    assert settings.lora_ranks == (4, 8, 16)
    assert settings.aggregation.max_global_rank == 64
    assert settings.train == TrainConfig()
    assert settings.federation.min_nodes == 2
    assert server_settings({}) == settings  # missing keys take the defaults


def test_all_problems_are_reported_together_with_their_fields() -> None:
    bad = {"local-steps": 0, "min-nodes": "many", "strategy": "fedavg", "max-global-rank": 2.5}
    with pytest.raises(SettingsError) as info:
        server_settings(bad)
    text = str(info.value)
    for field in ("`local-steps`", "`min-nodes`", "`strategy`", "`max-global-rank`"):
        assert field in text
    assert "flora" in text  # the fix: the known strategy names


@pytest.mark.parametrize(
    ("value", "shown"), [(0, "0.0"), (-0.5, "-0.5"), (1.01, "1.01"), ("half", "'half'")]
)
def test_fraction_evaluate_outside_zero_one_is_refused_with_key_value_and_fix(
    value: object, shown: str
) -> None:
    with pytest.raises(SettingsError) as info:
        server_settings({"fraction-evaluate": value})  # type: ignore[dict-item]
    [only] = info.value.problems
    assert only.startswith(f"`fraction-evaluate` is {shown}: use a value in (0, 1]")


def test_fraction_evaluate_is_read_into_the_federation_settings() -> None:
    assert server_settings({"fraction-evaluate": 0.1}).federation.fraction_evaluate == 0.1
    assert server_settings({}).federation.fraction_evaluate == 1.0


def test_unknown_keys_are_refused() -> None:
    with pytest.raises(SettingsError, match="num-rounds"):
        server_settings({"num-rounds": 3})


def test_missing_server_eval_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="`server-eval-data`"):
        server_settings({"server-eval-data": str(tmp_path / "nope.jsonl")})


def test_node_rank_comes_from_the_partition_unless_the_node_sets_it() -> None:
    run = {"lora-ranks": "4,8,16"}
    assert node_settings({"partition-id": 2}, run).lora_rank == 16
    assert node_settings({"partition-id": 4}, run).lora_rank == 8  # cycles
    node = node_settings({"partition-id": 0, "lora-rank": 12}, run)
    assert node.lora_rank == 12 and node.lora_alpha == 24.0 and node.scaling == 2.0
    assert node_settings({"partition-id": 0}, run).name == "hospital-cardiology"


def test_node_problems_are_collected(tmp_path: Path) -> None:
    with pytest.raises(SettingsError) as info:
        node_settings({"lora-rank": 0, "device": "tpu"}, {})
    text = str(info.value)
    assert "`lora-rank`" in text and "`device`" in text and "`data-path`" in text


def test_train_config_round_trips_through_a_config_record() -> None:
    config = TrainConfig(local_steps=7, batch_size=3, learning_rate=0.01, max_length=50, seed=4)
    assert TrainConfig.from_config(config.to_config()) == config
    with pytest.raises(SettingsError, match="`learning-rate`"):
        TrainConfig(learning_rate=2.0)


def test_cli_overrides_parse_toml_values() -> None:
    assert parse_override("local-steps=10") == ("local-steps", 10)
    assert parse_override("learning-rate=1e-3") == ("learning-rate", 0.001)
    assert parse_override("base-model=/models/llama") == ("base-model", "/models/llama")
    with pytest.raises(argparse.ArgumentTypeError, match="unknown"):
        parse_override("steps=10")
    with pytest.raises(argparse.ArgumentTypeError, match="key=value"):
        parse_override("local-steps")

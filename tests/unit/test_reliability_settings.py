"""Reliability settings and the one-line errors for inputs users get wrong."""

from __future__ import annotations

from pathlib import Path

import pytest

from common.config import DEFAULT_RUN_CONFIG, SettingsError
from server.cli.main import main
from server.run.modules import announced_modules, check_base_model
from server.run.settings import server_settings


@pytest.mark.parametrize(
    ("key", "value"),
    [("max-client-rank", 0), ("max-factor-norm", -1.0), ("max-examples", 0),
     ("max-reply-mb", 0.0), ("min-replies", 0), ("max-round-retries", -1)],
)  # fmt: skip
def test_bad_reliability_settings_name_the_key(key: str, value: object) -> None:
    with pytest.raises(SettingsError, match=f"`{key}` is"):
        server_settings({**DEFAULT_RUN_CONFIG, key: value})


def test_reliability_settings_are_read() -> None:
    settings = server_settings({"max-factor-norm": 50.0, "min-replies": 2, "max-reply-mb": 8.0})
    assert settings.limits.max_factor_norm == 50.0 and settings.limits.max_reply_bytes == 8 << 20
    assert settings.policy.min_replies == 2 and settings.resume_from is None


def test_resume_from_a_folder_without_checkpoint_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match=r"`resume-from` is .* holds no checkpoint"):
        server_settings({"resume-from": str(tmp_path)})


@pytest.mark.parametrize("value", ["/no/such/model", "no-such-org/no-such-model-xyz"])
def test_a_base_model_that_is_neither_folder_nor_hub_id_is_one_line(value: str) -> None:
    with pytest.raises(ValueError, match="`base-model` is") as err:
        check_base_model(value)
    assert "\n" not in str(err.value)


def test_cli_simulate_with_a_bad_base_model_exits_with_one_line(capsys) -> None:
    assert main(["simulate", "--base-model", "/no/such/model", "--rounds", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "`base-model` is '/no/such/model'" in err


def test_the_announced_modules_are_what_nodes_train(tiny_gpt2_dir: Path) -> None:
    """GPT-2's Conv1D layers too: A is (r, in) and B is (out, r) in peft's key names."""
    from tests.helpers import lora_factor_shapes

    shapes = lora_factor_shapes(tiny_gpt2_dir, rank=1)
    expected = {k.removesuffix(".lora_A.weight"): (shapes[k.replace("lora_A", "lora_B")][0], s[1])
                for k, s in shapes.items() if k.endswith(".lora_A.weight")}  # fmt: skip
    assert announced_modules(str(tiny_gpt2_dir), "all-linear") == expected


def test_the_scaling_bound_and_the_robust_screen_are_run_config_keys() -> None:
    settings = server_settings({"max-lora-scaling": 16.0, "max-norm-ratio": 8.0})
    assert settings.limits.max_lora_scaling == 16.0 and settings.limits.max_norm_ratio == 8.0
    assert server_settings({}).limits.max_norm_ratio == 0.0  # off by default
    with pytest.raises(SettingsError, match=r"`max-norm-ratio` is 0\.5: use 0 \(off\)"):
        server_settings({"max-norm-ratio": 0.5})
    with pytest.raises(SettingsError, match=r"`max-lora-scaling` is 0\.0"):
        server_settings({"max-lora-scaling": 0.0})

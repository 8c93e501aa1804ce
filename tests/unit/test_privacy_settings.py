"""Privacy settings: the run suggests, a node may only tighten; impossible combinations fail."""

from __future__ import annotations

from pathlib import Path

import pytest

from client.privacy.settings import (
    PrivacySettings,
    node_privacy,
    node_state_dir,
    run_privacy,
)
from common.config import SettingsError
from server.run.settings import server_settings

RUN = {"privacy": "dp-sgd", "dp-noise-multiplier": 1.0, "dp-max-epsilon": 8.0}


def test_defaults_are_no_privacy() -> None:
    assert run_privacy({}) == PrivacySettings()
    assert not run_privacy({}).enabled


def test_a_node_may_tighten_every_setting() -> None:
    node = {"dp-noise-multiplier": 1.5, "dp-delta": 1e-6, "dp-max-epsilon": 4, "dp-clip-norm": 3}
    settings = node_privacy(node, RUN)
    assert settings.noise_multiplier == 1.5 and settings.delta == 1e-6
    assert settings.max_epsilon == 4.0 and settings.clip_norm == 3.0  # C does not change ε
    turned_on = node_privacy({"privacy": "dp-lora", "dp-target-epsilon": 2}, {})
    assert turned_on.mode == "dp-lora" and turned_on.target_epsilon == 2.0


@pytest.mark.parametrize(
    ("node", "field"),
    [
        ({"dp-noise-multiplier": 0.5}, "`dp-noise-multiplier` is 0.5"),
        ({"dp-delta": 1e-3}, "`dp-delta` is 0.001"),
        ({"dp-max-epsilon": 20}, "`dp-max-epsilon` is 20"),
        ({"dp-max-epsilon": 0}, "`dp-max-epsilon` is 0"),  # 0 = no budget: weaker
        ({"privacy": "none"}, "`privacy` is 'none'"),
        ({"privacy": "dp-lora"}, "`privacy` is 'dp-lora'"),
    ],
)
def test_a_weaker_node_setting_is_refused_naming_field_value_and_fix(
    node: dict[str, object], field: str
) -> None:
    with pytest.raises(SettingsError) as info:
        node_privacy(node, RUN)
    text = str(info.value)
    assert field in text and ("remove" in text or "stricter" in text)


def test_a_weaker_target_epsilon_is_refused() -> None:
    run = {"privacy": "dp-sgd", "dp-target-epsilon": 8.0}
    with pytest.raises(SettingsError, match="`dp-target-epsilon` is 9"):
        node_privacy({"dp-target-epsilon": 9}, run)
    both = node_privacy({"dp-noise-multiplier": 2.0}, run)  # the larger noise wins later
    assert both.noise_multiplier == 2.0 and both.target_epsilon == 8.0


@pytest.mark.parametrize(
    ("run", "fix"),
    [
        ({"privacy": "dp-sgd"}, "give one, e.g. dp-noise-multiplier=1.0"),
        ({"privacy": "dp-sgd", "dp-noise-multiplier": 1, "dp-target-epsilon": 3}, "one of them"),
        ({"dp-max-epsilon": 3}, "a node with a budget cannot send un-noised updates"),
        ({"dp-noise-multiplier": 1}, "nothing would be noised"),
        ({"privacy": "dp-lora", "dp-target-epsilon": 9, "dp-max-epsilon": 3}, "cannot fit"),
        ({"privacy": "dp-foo", "dp-noise-multiplier": 1}, "use one of none, dp-sgd, dp-lora"),
        ({"privacy": "dp-sgd", "dp-noise-multiplier": 1, "dp-delta": 1.5}, "`dp-delta` is 1.5"),
        ({"privacy": "dp-sgd", "dp-noise-multiplier": 1, "dp-clip-norm": 0}, "`dp-clip-norm`"),
        ({"privacy": "dp-sgd", "dp-noise-multiplier": "lots"}, "`dp-noise-multiplier` is 'lots'"),
    ],
)
def test_impossible_combinations_fail_before_training(run: dict[str, object], fix: str) -> None:
    with pytest.raises(SettingsError, match=fix):
        run_privacy(run)


def test_the_server_refuses_bad_privacy_settings_at_start() -> None:
    with pytest.raises(SettingsError, match="dp-noise-multiplier"):
        server_settings({"privacy": "dp-sgd"})
    assert server_settings(RUN).privacy == run_privacy(RUN)


def test_state_dir_comes_from_the_node_config_else_the_run_dir(tmp_path: Path) -> None:
    given = node_state_dir({"state-dir": str(tmp_path)}, {}, node_name="a")
    assert given == tmp_path
    fallback = node_state_dir({}, {"run-dir": str(tmp_path / "runs")}, node_name="bank")
    assert fallback == tmp_path / "runs" / "state" / "bank"

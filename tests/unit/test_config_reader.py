"""The one config reader (common/config.py) and the one settings error, used by the server's,
the node's and the privacy settings alike."""

from __future__ import annotations

import pytest

from client.privacy.settings import node_privacy
from client.settings import TrainConfig, node_settings
from common.config import ConfigReader, SettingsError
from server.run.settings import server_settings
from strategies.flower.rounds import RoundPolicy
from strategies.math.validation import ReplyLimits
from strategies.options import AggregationOptions, Federation
from strategies.registry import strategy_class


@pytest.mark.parametrize(
    ("value", "expected"), [(3, 3), (3.0, 3), ("3", 3), ("-2", -2)]
)  # fmt: skip
def test_an_integer_is_an_int_an_integral_float_or_integer_text(
    value: object, expected: int
) -> None:
    read = ConfigReader({"k": value})
    assert read.get("k", int) == expected and read.problems == []


@pytest.mark.parametrize("value", [2.5, "2.5", True, [1], float("inf"), "x"])
def test_anything_else_is_a_problem_naming_the_key_the_value_and_the_fix(value: object) -> None:
    read = ConfigReader({"k": value}, defaults={"k": 7})
    assert read.get("k", int, "use an integer >= 1") == 7  # the default stands in
    assert read.problems == [f"`k` is {value!r}: use an integer >= 1"]


def test_numbers_booleans_text_and_absent_keys() -> None:
    read = ConfigReader({"f": "1e-3", "i": 2, "b": "TRUE", "bad-f": False, "bad-b": 1, "s": 5})
    assert read.get("f", float) == 0.001 and read.get("i", float) == 2.0
    assert read.get("b", bool) is True and read.get("s", str) == "5"
    assert read.optional("missing", int) is None and read.optional("missing", int, default=4) == 4
    assert read.optional("bad-f", float) is None and read.get("bad-b", bool, default=False) is False
    assert read.problems == ["`bad-f` is False: use a number", "`bad-b` is 1: use true or false"]
    with pytest.raises(SettingsError) as info:
        read.raise_problems()
    assert info.value.problems == read.problems


def test_choices_and_ranges() -> None:
    read = ConfigReader({"c": "tpu", "n": 0, "x": 0.5})
    assert read.choice("c", ["cpu", "cuda"], default="cpu") == "tpu"
    assert read.within("n", int, "use an integer >= 1", low=1) == 0
    assert read.within("x", float, "use a value in [0, 1]", low=0, high=1) == 0.5
    assert read.problems == ["`c` is 'tpu': use one of cpu, cuda", "`n` is 0: use an integer >= 1"]


def test_readers_can_share_one_list_and_build_collects_a_settings_errors_problems() -> None:
    node = ConfigReader({"a": "x"})
    run = ConfigReader({"b": "y"}, problems=node.problems)
    node.optional("a", int), run.optional("b", float)
    assert run.build(Federation, min_nodes=0, fraction_train=2.0) is None
    assert node.problems == [
        "`a` is 'x': use an integer",
        "`b` is 'y': use a number",
        "`min-nodes` is 0: use an integer >= 1",
        "`fraction-train` is 2.0: use a value in (0, 1]",
    ]


@pytest.mark.parametrize(
    "make",
    [
        lambda: Federation(min_nodes=0),
        lambda: AggregationOptions(server_lr=0.0),
        lambda: RoundPolicy(min_replies=0),
        lambda: ReplyLimits(max_lora_scaling=0.0),
        lambda: strategy_class("fedavg"),
    ],
)
def test_strategy_options_raise_the_one_settings_error_with_its_list(make) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(SettingsError) as info:
        make()
    assert len(info.value.problems) == 1 and info.value.problems[0].startswith("`")


def test_the_three_settings_read_values_by_the_same_rules() -> None:
    """A bool where a number belongs is refused the same way by the server's, the node's and
    the privacy settings; integer text and integral floats are integers everywhere."""
    with pytest.raises(SettingsError, match="`seed` is True: use an integer"):
        server_settings({"seed": True})
    with pytest.raises(SettingsError, match="`partition-id` is True: use an integer"):
        node_settings({"partition-id": True}, {})
    with pytest.raises(SettingsError, match="`dp-delta` is True: use a number"):
        node_privacy({"dp-delta": True}, {})
    assert server_settings({"seed": "4", "local-steps": 7.0}).train.local_steps == 7
    assert node_settings({"partition-id": "1", "lora-rank": 8.0}, {}).lora_rank == 8
    assert TrainConfig.from_config({"local-steps": 7.0, "learning-rate": "0.01"}) == TrainConfig(
        local_steps=7, learning_rate=0.01
    )

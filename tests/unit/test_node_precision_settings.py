"""Node settings `dtype` and `gradient-checkpointing`, and how `auto` picks a dtype."""

from __future__ import annotations

import pytest
import torch

from client.model.loading import pick_dtype
from client.settings import node_settings
from common.config import SettingsError


def test_defaults_are_auto_and_no_checkpointing() -> None:
    settings = node_settings({"partition-id": 0}, {})
    assert settings.dtype == "auto"
    assert settings.gradient_checkpointing is False


def test_node_config_sets_dtype_and_checkpointing() -> None:
    config = {"partition-id": 0, "dtype": "bfloat16", "gradient-checkpointing": True}
    settings = node_settings(config, {})
    assert (settings.dtype, settings.gradient_checkpointing) == ("bfloat16", True)


def test_bad_values_name_the_field_the_value_and_the_fix() -> None:
    config = {"partition-id": 0, "dtype": "bf16", "gradient-checkpointing": "yes"}
    with pytest.raises(SettingsError) as err:
        node_settings(config, {})
    assert "`dtype` is 'bf16': use one of auto, float32, bfloat16, float16" in str(err.value)
    assert "`gradient-checkpointing` is 'yes': use true or false" in str(err.value)


def test_auto_is_fp32_on_cpu() -> None:
    assert pick_dtype("auto", torch.device("cpu")) == torch.float32
    assert pick_dtype("float16", torch.device("cpu")) == torch.float16

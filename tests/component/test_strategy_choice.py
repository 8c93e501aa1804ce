"""Which strategy class a run builds: flora under dp-lora runs as the paper's fresh-B FLoRA."""

from __future__ import annotations

from common.config import DEFAULT_RUN_CONFIG
from server.run.federation import build_strategy
from server.run.settings import server_settings


def test_flora_runs_fresh_under_dp_lora_and_continues_otherwise() -> None:
    plain = build_strategy(server_settings(dict(DEFAULT_RUN_CONFIG)))
    private = build_strategy(
        server_settings({**DEFAULT_RUN_CONFIG, "privacy": "dp-lora", "dp-noise-multiplier": 1.0})
    )
    assert (plain.name, getattr(plain, "continues", None)) == ("flora", True)
    assert (private.name, getattr(private, "continues", None)) == ("flora-fresh", False)

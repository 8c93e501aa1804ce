"""The table of what leaves a node per mode: the docs are rendered from it, the reply obeys it."""

from __future__ import annotations

from pathlib import Path

import pytest

from client.privacy.releases import TABLE, render_markdown, reply_keys, select
from strategies import protocol as p

DOC = Path(__file__).resolve().parents[2] / "docs" / "privacy-releases.md"


def test_the_doc_is_rendered_from_the_table() -> None:
    assert DOC.read_text(encoding="utf-8") == render_markdown(), (
        "regenerate: python -m client.privacy.releases > docs/privacy-releases.md"
    )


def test_no_training_loss_or_time_leaves_under_a_dp_mode() -> None:
    for mode in ("dp-sgd", "dp-lora"):
        keys = reply_keys(mode, p.METRICS)
        assert not keys & {p.TRAIN_LOSS, p.TRAIN_LOSS_FIRST, p.TRAIN_SECONDS}
        assert p.DP_EPSILON_RECORD in keys and p.NUM_EXAMPLES in keys
    assert {p.TRAIN_LOSS, p.TRAIN_SECONDS} <= reply_keys("none", p.METRICS)
    assert all(modes for modes in TABLE.values())


def test_select_keeps_only_the_table_s_keys_and_refuses_a_missing_one() -> None:
    values = {p.NUM_EXAMPLES: 3, p.TRAIN_LOSS: 2.0, p.DP_EPSILON_RECORD: 1.0, p.DP_DELTA: 1e-5,
              p.DP_NOISE_MULTIPLIER: 1.0, p.DP_SAMPLE_RATE: 0.1, p.DP_STEPS: 4}  # fmt: skip
    kept = select("dp-sgd", p.METRICS, values)
    assert p.TRAIN_LOSS not in kept and kept[p.DP_EPSILON_RECORD] == 1.0
    with pytest.raises(KeyError, match="dp-steps"):
        select("dp-lora", p.METRICS, {k: v for k, v in values.items() if k != p.DP_STEPS})

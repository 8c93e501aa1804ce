"""The privacy figures each node reports with its train reply, recorded per node per round.

The node's ledger is the authority (client/privacy/ledger.py); the server only records what the node
claims — cumulative ε per record and, where the data set has that guarantee, per institution
(each at δ), this round's σ and q, steps so far, the mode, and the (σ, q, steps) history once σ
or q changed — so that ``metrics.jsonl`` and the summary show it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

from flwr.app import Message

from strategies import protocol as p
from strategies.flower.report import RoundReport

_NUMBERS = {
    p.DP_EPSILON_RECORD: "dp_epsilon_record",
    p.DP_EPSILON_INSTITUTION: "dp_epsilon_institution",
    p.DP_DELTA: "dp_delta",
    p.DP_NOISE_MULTIPLIER: "dp_noise_multiplier",
    p.DP_SAMPLE_RATE: "dp_sample_rate",
    p.DP_STEPS: "dp_steps",
}


def read_privacy(msg: Message) -> dict[str, Any]:
    """``dp_*`` fields of one train reply; empty for error replies and replies without them."""
    if msg.has_error() or not msg.has_content():
        return {}
    config = msg.content.config_records.get(p.PRIVACY)
    if config is None:
        return {}
    fields: dict[str, Any] = {"dp_mode": str(config.get(p.DP_MODE, ""))}
    metrics = msg.content.metric_records.get(p.METRICS)
    for key, name in _NUMBERS.items():
        value = None if metrics is None else metrics.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
            fields[name] = int(value) if name == "dp_steps" else float(value)
    history = config.get(p.DP_HISTORY)
    if isinstance(history, list) and len(history) % 3 == 0:
        flat = [float(x) for x in history if isinstance(x, int | float)]
        fields["dp_history"] = [[s, q, int(n)] for s, q, n in zip(*[iter(flat)] * 3, strict=True)]
    return fields


def record_privacy(
    report: RoundReport, replies: Iterable[Message], label: Callable[[int, str], str]
) -> None:
    """Copy each reply's privacy figures into its node's entry of ``report``."""
    for msg in replies:
        fields = read_privacy(msg)
        if not fields:
            continue
        adapter = msg.content.config_records.get(p.ADAPTER)
        name = str(adapter.get(p.NODE_NAME, "")) if adapter is not None else ""
        entry = report.node(msg.metadata.src_node_id, label(msg.metadata.src_node_id, name))
        for key, value in fields.items():
            setattr(entry, key, value)

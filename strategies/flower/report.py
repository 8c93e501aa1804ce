"""Per-round record of what happened at each node, for ``metrics.jsonl`` and the summary."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from flwr.app import Message

from strategies import protocol as p

QUANTIZATIONS = ("none", "nf4", "int8")  # what a node may report (client/settings.py)


@dataclass
class NodeRound:
    name: str
    rank: int | None = None
    num_examples: int | None = None
    train_loss: float | None = None
    eval_loss: float | None = None
    bytes_up: int = 0
    bytes_down: int = 0
    rejected: str | None = None
    quantization: str | None = None  # how the node held its base model, as it reported it
    # The node's privacy ledger as it reported it (strategies/flower/privacy_report.py):
    # cumulative ε per record and (where the data set has one) per institution at δ, this
    # round's σ and q, steps so far, and the (σ, q, steps) history once σ or q changed.
    dp_mode: str | None = None
    dp_epsilon_record: float | None = None
    dp_epsilon_institution: float | None = None
    dp_delta: float | None = None
    dp_noise_multiplier: float | None = None
    dp_sample_rate: float | None = None
    dp_steps: int | None = None
    dp_history: list[list[float]] | None = None


@dataclass
class RoundReport:
    """One round: per-node numbers plus the global adapter's rank and truncation error."""

    round: int
    nodes: dict[int, NodeRound] = field(default_factory=dict)
    global_rank: int = 0
    recompress_error: float = 0.0
    aggregated: bool = False
    # Nodes connected when this round's nodes were sampled; nodes sent a train instruction (all
    # attempts of the round).
    available: int = 0
    sampled: set[int] = field(default_factory=set)
    extra: dict[str, float] = field(default_factory=dict)

    def node(self, node_id: int, name: str = "") -> NodeRound:
        entry = self.nodes.setdefault(node_id, NodeRound(name=name or f"node-{node_id}"))
        if name:
            entry.name = name
        return entry

    def to_json(self) -> dict[str, Any]:
        nodes = {
            entry.name: {
                "node_id": node_id,
                **{k: v for k, v in asdict(entry).items() if k != "name"},
            }
            for node_id, entry in sorted(self.nodes.items(), key=lambda kv: kv[1].name)
        }
        return {
            "round": self.round,
            "aggregated": self.aggregated,
            "global_rank": self.global_rank,
            "recompress_error": self.recompress_error,
            "available": self.available,
            "sampled": len(self.sampled),
            "bytes_up": sum(e.bytes_up for e in self.nodes.values()),
            "bytes_down": sum(e.bytes_down for e in self.nodes.values()),
            **self.extra,
            "nodes": nodes,
        }


def record_setup(
    report: RoundReport, replies: Iterable[Message], label: Callable[[int, str], str]
) -> None:
    """Copy how each node held its base model (its train reply's `quantization`) into its entry
    of ``report``; a value the node may not send is not recorded."""
    for msg in replies:
        if msg.has_error() or not msg.has_content():
            continue
        adapter = msg.content.config_records.get(p.ADAPTER)
        value = adapter.get(p.QUANTIZATION) if adapter is not None else None
        if value in QUANTIZATIONS:
            name = str(adapter.get(p.NODE_NAME, "")) if adapter is not None else ""
            entry = report.node(msg.metadata.src_node_id, label(msg.metadata.src_node_id, name))
            entry.quantization = str(value)

"""Strategies whose nodes continue from the global factors (FedIT, zero-padding, FlexLoRA).

The node is told so in each train instruction (``node-mode = continue``): it starts its LoRA at
the first r_i components of the global adapter (A[:r_i], B[:, :r_i] / s_i) instead of merging
it, and in round 1, with no global yet, at the public seeded A (``shared-a-seed``), so every node
starts from one init as FedAvg requires. Nodes whose rank the server has seen get only their
r_i components on the downlink; a node not seen yet gets all and keeps the first r_i.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from logging import WARNING
from typing import Any

from flwr.app import ArrayRecord, Message
from flwr.common import log

from common.config import ConfigValue
from strategies import protocol as p
from strategies.flower.base import LoraStrategy
from strategies.flower.replies import Parsed, Rejected
from strategies.math.factors import join_factor_keys, truncate


def refuse(
    strategy: LoraStrategy, server_round: int, parsed: Parsed, reasons: Mapping[int, str]
) -> Parsed:
    """Move the updates of the nodes in ``reasons`` (node id -> why) to the refusals."""
    kept = Parsed(rejected=list(parsed.rejected))
    for update in parsed.updates:
        reason = reasons.get(update.node_id)
        if not reason:
            kept.updates.append(update)
            continue
        kept.rejected.append(Rejected(update.node_id, update.name, reason))
        entry = strategy.report(server_round).node(update.node_id, update.name)
        entry.rejected = reason
        log(WARNING, "round %d: reply from %s not used: %s", server_round, entry.name, reason)
    return kept


class ContinueStrategy(LoraStrategy):
    """Base of the strategies whose nodes continue training the global factors."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._ranks: dict[int, int] = {}  # node id -> the rank it last replied with
        self._per_rank: dict[int, ArrayRecord] = {}
        self._per_rank_of: ArrayRecord | None = None  # the wire record `_per_rank` was cut from

    def instruction(self, server_round: int) -> dict[str, ConfigValue]:
        return {p.NODE_MODE: p.CONTINUE, p.SHARED_A_SEED: self.federation.seed}

    def screen(self, server_round: int, parsed: Parsed) -> Parsed:
        """Refuse valid replies the algorithm cannot combine (default: none)."""
        return parsed

    def _parse_round(self, server_round: int, replies: Iterable[Message]) -> Parsed:
        parsed = self.screen(server_round, super()._parse_round(server_round, replies))
        self._ranks.update({u.node_id: u.rank for u in parsed.updates})
        return parsed

    def node_record(self, node_id: int, record: ArrayRecord) -> ArrayRecord:
        """The first r_i components of the global adapter for a node of known rank r_i."""
        rank = self._ranks.get(node_id)
        global_rank = max((a.shape[0] for a, _ in self._global.values()), default=0)
        if rank is None or rank >= global_rank:
            return record
        if self._per_rank_of is not record:
            self._per_rank, self._per_rank_of = {}, record
        if rank not in self._per_rank:
            self._per_rank[rank] = p.to_record(join_factor_keys(truncate(self._global, rank)))
        return self._per_rank[rank]

"""Strategies whose nodes continue from the global factors (FedIT, zero-padding, FlexLoRA).

The node is told so in each train instruction (``node-mode = continue``): it starts its LoRA at
the first r_i components of the global adapter (A[:r_i], B[:, :r_i] / s_i) instead of merging
it, and in round 1, with no global yet, at the public seeded A (``shared-a-seed``), so every node
starts from one init as FedAvg requires. Nodes whose rank the server has seen get only their
r_i components on the downlink; a node not seen yet gets all and keeps the first r_i.
"""

from __future__ import annotations

from typing import Any

from flwr.app import ArrayRecord

from common.config import ConfigValue
from strategies import protocol as p
from strategies.flower.base import LoraStrategy
from strategies.math.factors import join_factor_keys, truncate


class ContinueStrategy(LoraStrategy):
    """Base of the strategies whose nodes continue training the global factors."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._per_rank: dict[int, ArrayRecord] = {}
        self._per_rank_of: ArrayRecord | None = None  # the wire record `_per_rank` was cut from

    def instruction(self, server_round: int) -> dict[str, ConfigValue]:
        return {p.NODE_MODE: p.CONTINUE, p.SHARED_A_SEED: self.federation.seed}

    def node_record(self, node_id: int, record: ArrayRecord) -> ArrayRecord:
        """The first r_i components of the global adapter for a node of known rank r_i."""
        rank = self.node_ranks.get(node_id)
        if rank is None or rank >= self.global_rank:
            return record
        if self._per_rank_of is not record:
            self._per_rank, self._per_rank_of = {}, record
        if rank not in self._per_rank:
            self._per_rank[rank] = p.to_record(join_factor_keys(truncate(self._global, rank)))
        return self._per_rank[rank]

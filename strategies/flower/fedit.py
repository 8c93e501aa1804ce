"""The FedIT Flower strategy: nodes of one rank continue from the global (A, B); both averaged.

Math in :mod:`strategies.math.fedit`.
"""

from __future__ import annotations

from collections.abc import Sequence

from strategies.flower.base import GlobalAdapter
from strategies.flower.continuing import ContinueStrategy
from strategies.flower.replies import ClientUpdate, example_weights, majority
from strategies.math.fedit import fedit_average


class FedIT(ContinueStrategy):
    """FedAvg of A and of B (Zhang et al., ICASSP 2024); homogeneous ranks only."""

    name = "fedit"
    accepts_heterogeneous_ranks = False
    accepts_server_lr = False

    def screen_update(
        self, update: ClientUpdate, round_updates: Sequence[ClientUpdate]
    ) -> str | None:
        """Keep the replies of the global adapter's rank; in round 1, of the most common rank
        (a tie goes to the rank of the first node in aggregation order, not the first reply)."""
        rank = self.global_rank or majority([u.rank for u in round_updates])
        if update.rank == rank:
            return None
        return (
            f"rank {update.rank}, but `strategy` fedit averages factors of one rank ({rank}): "
            f"set the node's `lora-rank` to {rank}, or use a strategy that accepts "
            "heterogeneous ranks (flora, flexlora, ffa, zeropad)"
        )

    def aggregate(
        self, server_round: int, updates: Sequence[ClientUpdate], global_adapter: GlobalAdapter
    ) -> GlobalAdapter:
        return fedit_average([u.factors for u in updates], example_weights(updates))

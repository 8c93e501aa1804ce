"""The FedIT Flower strategy: nodes of one rank continue from the global (A, B); both averaged.

Math in :mod:`strategies.math.fedit`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from strategies.flower.base import GlobalAdapter
from strategies.flower.continuing import ContinueStrategy, refuse
from strategies.flower.replies import ClientUpdate, Parsed, example_weights
from strategies.math.fedit import fedit_average


class FedIT(ContinueStrategy):
    """FedAvg of A and of B (Zhang et al., ICASSP 2024); homogeneous ranks only."""

    name = "fedit"
    accepts_heterogeneous_ranks = False
    accepts_server_lr = False

    def screen(self, server_round: int, parsed: Parsed) -> Parsed:
        """Keep the replies of the global adapter's rank (round 1: the most common rank)."""
        ranks = [u.rank for u in parsed.updates]
        if not ranks:
            return parsed
        rank = max((a.shape[0] for a, _ in self._global.values()), default=0)
        rank = rank or Counter(ranks).most_common(1)[0][0]
        reasons = {
            u.node_id: f"rank {u.rank}, but `strategy` fedit averages factors of one rank "
            f"({rank}): set the node's `lora-rank` to {rank}, or use a strategy that accepts "
            "heterogeneous ranks (flora, flexlora, ffa, zeropad)"
            for u in parsed.updates
            if u.rank != rank
        }
        return refuse(self, server_round, parsed, reasons)

    def aggregate(
        self, server_round: int, updates: Sequence[ClientUpdate], global_adapter: GlobalAdapter
    ) -> GlobalAdapter:
        return fedit_average([u.factors for u in updates], example_weights(updates))

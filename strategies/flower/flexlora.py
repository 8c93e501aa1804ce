"""The FlexLoRA Flower strategy: mean of the products, SVD, each node its rank's truncation.

Math in :mod:`strategies.math.flexlora` (factored: no dense out × in matrix).
"""

from __future__ import annotations

from collections.abc import Sequence
from logging import INFO

from flwr.common import log

from strategies.flower.base import GlobalAdapter
from strategies.flower.continuing import ContinueStrategy
from strategies.flower.flora import record_truncation
from strategies.flower.replies import ClientUpdate, example_weights
from strategies.math.flexlora import flexlora_average


class FlexLoRA(ContinueStrategy):
    """FlexLoRA (Bai et al., NeurIPS 2024) with the global ΔW kept in SVD-ordered factors."""

    name = "flexlora"

    def aggregate(
        self, server_round: int, updates: Sequence[ClientUpdate], global_adapter: GlobalAdapter
    ) -> GlobalAdapter:
        result = flexlora_average(
            [u.factors for u in updates],
            example_weights(updates),
            previous=global_adapter,
            server_lr=self.options.server_lr,
            max_rank=self.options.max_global_rank,
            tol=self.options.recompress_tol,
        )
        truncation = record_truncation(self.report(server_round), result)
        log(INFO, "round %d: mean of %d products -> global rank %d (%s)",
            server_round, len(updates), result.max_rank, truncation)  # fmt: skip
        return result.adapter

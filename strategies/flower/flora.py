"""The FLoRA Flower strategy: stack this round's factors onto the global adapter, recompress.

Math in :mod:`strategies.math.flora` (stacking) and :mod:`strategies.math.lowrank` (recompression).
"""

from __future__ import annotations

from collections.abc import Sequence
from logging import INFO

from flwr.common import log

from strategies.flower.base import GlobalAdapter, LoraStrategy
from strategies.flower.replies import ClientUpdate, example_weights
from strategies.math.lowrank import accumulate_updates


class FLoRA(LoraStrategy):
    """FLoRA stacking with the accumulated global adapter kept at rank <= ``max_global_rank``."""

    name = "flora"

    def aggregate(
        self, server_round: int, updates: Sequence[ClientUpdate], global_adapter: GlobalAdapter
    ) -> GlobalAdapter:
        result = accumulate_updates(  # append η·Σ p_i s_i B_i A_i, one module at a time
            global_adapter,
            [u.factors for u in updates],
            example_weights(updates),
            scale=self.options.server_lr,
            max_rank=self.options.max_global_rank,
            tol=self.options.recompress_tol,
        )
        report = self.report(server_round)
        report.recompress_error = result.relative_error
        log(
            INFO,
            "round %d: stacked rank %d from %d nodes -> global rank %d (truncation error %.2e)",
            server_round,
            sum(u.rank for u in updates),
            len(updates),
            result.max_rank,
            result.relative_error,
        )
        return result.adapter

    def summary(self) -> None:
        super().summary()
        log(INFO, "\t├── %s", self.options)

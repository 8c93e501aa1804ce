"""The FLoRA Flower strategies: stack this round's factors onto the global adapter, recompress.

``flora``: each node continues from the global adapter (node-mode ``continue-merged``: its LoRA
starts at the first r_i global components, the rest merged into its weights, so it starts at the
global model and keeps its progress); the server stacks each node's *change*, [B_i, -B_i0] and
[A_i; A_i0], the nodes' starts collapsed into one block
(:func:`strategies.math.lowrank.accumulate_changes`). ``flora-fresh``: the paper's FLoRA,
each node merges the global adapter and trains a fresh LoRA from B = 0 every round.
Math in :mod:`strategies.math.flora` (stacking) and :mod:`strategies.math.lowrank` (recompression).
"""

from __future__ import annotations

from collections.abc import Sequence
from logging import INFO

from flwr.common import log

from common.config import ConfigValue
from strategies import protocol as p
from strategies.flower.base import GlobalAdapter, LoraStrategy
from strategies.flower.replies import ClientUpdate, example_weights
from strategies.math.lowrank import accumulate_changes, accumulate_updates


class FLoRA(LoraStrategy):
    """FLoRA stacking of the nodes' changes, the global adapter kept at rank <= the cap."""

    name = "flora"
    continues = True  # nodes start from the global factors; False: a fresh B = 0 each round

    def instruction(self, server_round: int) -> dict[str, ConfigValue]:
        return {p.NODE_MODE: p.CONTINUE_MERGED if self.continues else p.MERGE}

    def aggregate(
        self, server_round: int, updates: Sequence[ClientUpdate], global_adapter: GlobalAdapter
    ) -> GlobalAdapter:
        weights = example_weights(updates)
        # append η·Σ p_i s_i B_i A_i (fresh) or each node's change from its start (continuing),
        # folded one module at a time from the replies as parsed (strategies/math/stacking.py)
        accumulate = accumulate_changes if self.continues else accumulate_updates
        result = accumulate(
            global_adapter,
            [u.factors for u in updates],
            weights,
            scale=self.options.server_lr,
            max_rank=self.options.max_global_rank,
            tol=self.options.recompress_tol,
        )
        stacked_rank = max((r.stacked_rank for r in result.reports.values()), default=0)
        report = self.report(server_round)
        report.recompress_error = result.relative_error
        log(
            INFO,
            "round %d: stacked rank %d from %d nodes -> global rank %d (truncation error %.2e)",
            server_round,
            stacked_rank,
            len(updates),
            result.max_rank,
            result.relative_error,
        )
        return result.adapter

    def summary(self) -> None:
        super().summary()
        log(INFO, "\t├── %s, nodes continue: %s", self.options, self.continues)


class FLoRAFresh(FLoRA):
    """The paper's FLoRA: every node merges the global and trains a fresh LoRA (B = 0)."""

    name = "flora-fresh"
    continues = False

"""The FFA-LoRA Flower strategy: A frozen at the public seeded init, only B trained and averaged.

Math in :mod:`strategies.math.ffa`; the shared A in :mod:`strategies.math.public_a`.
"""

from __future__ import annotations

from collections.abc import Sequence

from common.config import ConfigValue
from strategies import protocol as p
from strategies.flower.base import GlobalAdapter, LoraStrategy
from strategies.flower.replies import ClientUpdate, example_weights
from strategies.math.ffa import ffa_average, public_a_mismatch


class FFA(LoraStrategy):
    """FFA-LoRA (Sun et al., ICLR 2024) with nested ranks: exact for heterogeneous ranks."""

    name = "ffa"

    def instruction(self, server_round: int) -> dict[str, ConfigValue]:
        """Merge the global, start A at the public seeded init (one per run) and freeze it."""
        return {p.NODE_MODE: p.MERGE, p.SHARED_A_SEED: self.federation.seed, p.FREEZE_A: True}

    def screen_update(
        self, update: ClientUpdate, round_updates: Sequence[ClientUpdate]
    ) -> str | None:
        """Refuse an update whose A is not the public seeded A (the node trained it)."""
        return public_a_mismatch(update.factors, seed=self.federation.seed) or None

    def aggregate(
        self, server_round: int, updates: Sequence[ClientUpdate], global_adapter: GlobalAdapter
    ) -> GlobalAdapter:
        return ffa_average(
            [u.factors for u in updates],
            example_weights(updates),
            previous=global_adapter,
            seed=self.federation.seed,
            server_lr=self.options.server_lr,
        )

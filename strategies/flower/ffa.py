"""The FFA-LoRA Flower strategy: A frozen at the public seeded init, only B trained and averaged.

Math in :mod:`strategies.math.ffa`; the shared A in :mod:`strategies.math.public_a`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from flwr.app import Message

from common.config import ConfigValue
from strategies import protocol as p
from strategies.flower.base import GlobalAdapter, LoraStrategy
from strategies.flower.continuing import refuse
from strategies.flower.replies import ClientUpdate, Parsed, example_weights
from strategies.math.ffa import ffa_average, public_a_mismatch


class FFA(LoraStrategy):
    """FFA-LoRA (Sun et al., ICLR 2024) with nested ranks: exact for heterogeneous ranks."""

    name = "ffa"

    def instruction(self, server_round: int) -> dict[str, ConfigValue]:
        """Merge the global, start A at the public seeded init (one per run) and freeze it."""
        return {p.NODE_MODE: p.MERGE, p.SHARED_A_SEED: self.federation.seed, p.FREEZE_A: True}

    def _parse_round(self, server_round: int, replies: Iterable[Message]) -> Parsed:
        parsed = super()._parse_round(server_round, replies)
        seed = self.federation.seed
        reasons = {u.node_id: public_a_mismatch(u.factors, seed=seed) for u in parsed.updates}
        return refuse(self, server_round, parsed, reasons)

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

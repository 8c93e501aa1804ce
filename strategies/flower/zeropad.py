"""The zero-padding Flower strategy: pad to the largest rank, average, nodes keep their first r_i.

Math in :mod:`strategies.math.zeropad`.
"""

from __future__ import annotations

from collections.abc import Sequence

from strategies.flower.base import GlobalAdapter
from strategies.flower.continuing import ContinueStrategy
from strategies.flower.replies import ClientUpdate, example_weights
from strategies.math.zeropad import zeropad_average


class ZeroPad(ContinueStrategy):
    """HetLoRA-style zero-padding (Cho et al., 2024) of heterogeneous-rank factors."""

    name = "zeropad"
    accepts_server_lr = False

    def aggregate(
        self, server_round: int, updates: Sequence[ClientUpdate], global_adapter: GlobalAdapter
    ) -> GlobalAdapter:
        return zeropad_average([u.factors for u in updates], example_weights(updates))

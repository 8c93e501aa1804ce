"""Typed options of the strategies: who takes part, and how the global adapter is updated."""

from __future__ import annotations

import math
from dataclasses import dataclass

from common.config import SettingsError


@dataclass(frozen=True)
class Federation:
    """Who takes part in a round and how long the server waits for them."""

    min_nodes: int = 1
    fraction_train: float = 1.0
    # Share of the connected nodes sampled for evaluation each round (at least one node).
    fraction_evaluate: float = 1.0
    node_wait_s: float = 120.0
    seed: int = 0

    def __post_init__(self) -> None:
        problems = []
        if self.min_nodes < 1:
            problems.append(f"`min-nodes` is {self.min_nodes}: use an integer >= 1")
        if not 0.0 < self.fraction_train <= 1.0:
            problems.append(f"`fraction-train` is {self.fraction_train}: use a value in (0, 1]")
        if not 0.0 < self.fraction_evaluate <= 1.0:
            problems.append(
                f"`fraction-evaluate` is {self.fraction_evaluate}: use a value in (0, 1] "
                "(1: every node evaluates)"
            )
        if not self.node_wait_s > 0:
            problems.append(f"`node-wait-s` is {self.node_wait_s}: use seconds > 0")
        if problems:
            raise SettingsError(problems)


@dataclass(frozen=True)
class AggregationOptions:
    """How the server updates the global adapter and keeps it small.

    ``max_global_rank``/``recompress_tol``: the cap and the energy tolerance of the exact
    recompression (strategies that recompress). ``server_lr``: the step η the strategies that
    add an update to the global adapter take along the nodes' mean update (1: plain average);
    ``server_momentum``: FedAvgM's β on that update (strategies that accept it; 0: none).
    """

    max_global_rank: int | None = 64
    recompress_tol: float = 0.0
    server_lr: float = 1.0
    server_momentum: float = 0.0

    def __post_init__(self) -> None:
        problems = []
        if self.max_global_rank is not None and self.max_global_rank < 1:
            problems.append(f"`max-global-rank` is {self.max_global_rank}: use an integer >= 1")
        if not 0.0 <= self.recompress_tol < 1.0:
            problems.append(f"`recompress-tol` is {self.recompress_tol}: use a value in [0, 1)")
        if not (math.isfinite(self.server_lr) and self.server_lr > 0):
            problems.append(f"`server-lr` is {self.server_lr}: use a number > 0 (1: plain mean)")
        if not 0.0 <= self.server_momentum < 1.0:
            problems.append(f"`server-momentum` is {self.server_momentum}: use a value in [0, 1) "
                            "(0: none)")  # fmt: skip
        if problems:
            raise SettingsError(problems)

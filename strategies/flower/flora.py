"""The FLoRA Flower strategies: stack this round's factors onto the global adapter, recompress.

``flora``: each node continues from the global adapter (node-mode ``continue-merged``: its LoRA
starts at the first r_i global components, the rest merged into its weights, so it starts at the
global model and keeps its progress); the server stacks each node's *change*, [B_i, -B_i0] and
[A_i; A_i0], the nodes' starts collapsed into one block
(:func:`strategies.math.streaming.accumulate_changes`). ``flora-fresh``: the paper's FLoRA,
each node merges the global adapter and trains a fresh LoRA from B = 0 every round.
Math in :mod:`strategies.math.flora` (stacking) and :mod:`strategies.math.lowrank` (recompression);
``server-momentum`` β > 0 moves the global adapter by FedAvgM's momentum of the stacked updates
(:mod:`strategies.math.momentum`), kept as factors and checkpointed with the global adapter.
"""

from __future__ import annotations

from collections.abc import Sequence
from logging import INFO
from typing import Any

import numpy as np
from flwr.app import ArrayRecord
from flwr.common import log
from numpy.typing import NDArray

from common.config import ConfigValue
from strategies import protocol as p
from strategies.flower.base import GlobalAdapter, LoraStrategy
from strategies.flower.replies import ClientUpdate, example_weights
from strategies.flower.report import RoundReport
from strategies.math.factors import LowRank, join_factor_keys, split_factor_keys
from strategies.math.flora import node_start, stack, stack_changes
from strategies.math.lowrank import Accumulated
from strategies.math.momentum import momentum_step
from strategies.math.streaming import accumulate_changes, accumulate_updates

MOMENTUM_PREFIX = "momentum/"  # checkpoint array names of the server momentum


class FLoRA(LoraStrategy):
    """FLoRA stacking of the nodes' changes, the global adapter kept at rank <= the cap."""

    name = "flora"
    continues = True  # nodes start from the global factors; False: a fresh B = 0 each round
    accepts_server_momentum = True

    def instruction(self, server_round: int) -> dict[str, ConfigValue]:
        return {p.NODE_MODE: p.CONTINUE_MERGED if self.continues else p.MERGE}

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._momentum: dict[str, LowRank] = {}  # server momentum M (FedAvgM), when β > 0

    def aggregate(
        self, server_round: int, updates: Sequence[ClientUpdate], global_adapter: GlobalAdapter
    ) -> GlobalAdapter:
        weights = example_weights(updates)
        eta, beta = self.options.server_lr, self.options.server_momentum
        if beta > 0:  # FedAvgM: M = β M + D, G = G + η M (strategies/math/momentum.py)
            if self.continues and global_adapter:  # each node's change: a rank <= 2 r_i block
                starts = [node_start(global_adapter, rank=u.rank, scaling=_scaling(u))
                          for u in updates]  # fmt: skip
                stacked = stack_changes([u.factors for u in updates], starts, weights)
            else:  # fresh B = 0 at every node: the stack is the round's update
                stacked = stack([u.factors for u in updates], weights)
            stacked_rank = max((a.shape[0] for a, _, _ in stacked.values()), default=0)
            step = momentum_step(global_adapter, self._momentum, stacked, beta=beta, eta=eta,
                                 max_rank=self.options.max_global_rank,
                                 tol=self.options.recompress_tol)  # fmt: skip
            result, self._momentum = step.accumulated, step.momentum
        else:
            # append η·Σ p_i s_i B_i A_i (fresh) or each node's change from its start
            # (continuing), folded one module at a time from the replies as parsed
            # (strategies/math/stacking.py)
            accumulate = accumulate_changes if self.continues else accumulate_updates
            result = accumulate(
                global_adapter,
                [u.factors for u in updates],
                weights,
                scale=eta,
                max_rank=self.options.max_global_rank,
                tol=self.options.recompress_tol,
            )
            stacked_rank = max((r.stacked_rank for r in result.reports.values()), default=0)
        log(
            INFO,
            "round %d: stacked rank %d from %d nodes -> global rank %d (%s)",
            server_round,
            stacked_rank,
            len(updates),
            result.max_rank,
            record_truncation(self.report(server_round), result),
        )
        return result.adapter

    def state_dict(self) -> tuple[dict[str, NDArray[np.floating]], dict[str, Any]]:
        """The base class's, plus the server momentum's factors under ``momentum/``."""
        arrays, state = super().state_dict()
        momentum = join_factor_keys(self._momentum)
        return {**arrays, **{MOMENTUM_PREFIX + k: v for k, v in momentum.items()}}, state

    def load_state_dict(
        self,
        arrays: dict[str, NDArray[np.floating]],
        state: dict[str, Any],
        *,
        completed_round: int,
    ) -> ArrayRecord:
        """Adopt a checkpoint, its server momentum (if any) included."""
        momentum = {k.removeprefix(MOMENTUM_PREFIX): np.asarray(v, np.float64)
                    for k, v in arrays.items() if k.startswith(MOMENTUM_PREFIX)}  # fmt: skip
        pairs, problems = split_factor_keys(momentum)
        if problems:
            raise ValueError("the checkpoint's server momentum is malformed: " + problems[0])
        self._momentum = dict(pairs)
        adapter = {k: v for k, v in arrays.items() if not k.startswith(MOMENTUM_PREFIX)}
        return super().load_state_dict(adapter, state, completed_round=completed_round)

    def summary(self) -> None:
        super().summary()
        log(INFO, "\t├── %s, nodes continue: %s", self.options, self.continues)


class FLoRAFresh(FLoRA):
    """The paper's FLoRA: every node merges the global and trains a fresh LoRA (B = 0)."""

    name = "flora-fresh"
    continues = False


def record_truncation(report: RoundReport, result: Accumulated) -> str:
    """Put the round's truncation error in ``report`` (``recompress_error``; where it is an
    estimate, its standard error as ``recompress_error_sd``) and describe it for the log."""
    report.recompress_error = result.relative_error
    if not result.estimated:
        return f"truncation error {result.relative_error:.2e}"
    report.extra["recompress_error_sd"] = result.relative_error_sd
    return (f"truncation error {result.relative_error:.2e}, estimated: "
            f"± {result.relative_error_sd:.1e}")  # fmt: skip


def _scaling(update: ClientUpdate) -> float:
    return next(iter(update.factors.values()))[2]

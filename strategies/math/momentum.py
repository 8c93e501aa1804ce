"""Server momentum on a low-rank global adapter (FedAvgM), as pure numpy functions.

Hsu, Qi and Brown, "Measuring the Effects of Non-Identical Data Distribution for Federated
Visual Classification", 2019, Alg. 1 (FedAvgM); Reddi et al., "Adaptive Federated
Optimization", ICLR 2021, Alg. 1 with the SGD-momentum server optimizer. With the round's
aggregated update ``D_t`` (FLoRA: the stacked ``Σ_i p_i s_i (B_i A_i - B_i0 A_i0)``), momentum
``β`` and server step ``η``:

    M_t = β M_{t-1} + D_t          (M_0 = 0)
    G_t = G_{t-1} + η M_t

A direction the nodes push round after round is moved up to ``1 / (1 - β)`` times as far as
plain averaging moves it; a direction they push back and forth cancels. ``M`` is kept as
factors ``(A_M, B_M)`` recompressed to the same rank cap as the global adapter
(:func:`strategies.math.lowrank.accumulate`), so nothing dense out x in is ever formed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from strategies.math.factors import Factors, LowRank
from strategies.math.lowrank import Accumulated, accumulate


@dataclass(frozen=True)
class MomentumStep:
    """The new global adapter (with its recompression reports) and the new momentum."""

    accumulated: Accumulated
    momentum: dict[str, LowRank]


def momentum_step(
    global_adapter: Mapping[str, LowRank],
    momentum: Mapping[str, LowRank],
    update: Mapping[str, Factors],
    *,
    beta: float,
    eta: float,
    max_rank: int | None,
    tol: float = 0.0,
) -> MomentumStep:
    """One FedAvgM step on factors: ``M = β M + D``, ``G = G + η M`` (module doc).

    Parameters
    ----------
    global_adapter
        Module -> ``(A_g, B_g)`` (scaling 1); empty before the first round.
    momentum
        Module -> ``(A_M, B_M)``; empty before the first round (M_0 = 0).
    update
        Module -> ``(A, B, s)``: this round's aggregated update ``s B A``.
    beta, eta
        Momentum ``β`` in [0, 1) and server step ``η`` > 0.
    max_rank, tol
        The rank cap and energy tolerance of both recompressions.

    Returns
    -------
    MomentumStep
        ``accumulated.adapter`` ~= G + η (β M + D) and ``momentum`` ~= β M + D (exact when
        the cap reaches the ranks).
    """
    if not 0.0 <= beta < 1.0:
        raise ValueError(f"`beta` is {beta}: use a value in [0, 1)")
    decayed = {m: (a, beta * b) for m, (a, b) in momentum.items()}  # β M, (k, in) and (out, k)
    new_momentum = accumulate(decayed, update, max_rank=max_rank, tol=tol).adapter
    step = {m: (a, b, eta) for m, (a, b) in new_momentum.items() if m in update}
    accumulated = accumulate(global_adapter, step, max_rank=max_rank, tol=tol)
    return MomentumStep(accumulated, new_momentum)

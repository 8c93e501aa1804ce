"""FlexLoRA: average the full LoRA products, then give each node the SVD truncation to its rank.

Bai et al., "Federated Fine-tuning of Large Language Models under Heterogeneous Tasks and Client
Resources", NeurIPS 2024, Sec. 3 (Eq. 3-4):

    ΔW = Σ_i w_i s_i B_i A_i                  the weighted average of the products (out, in)
    ΔW = U Σ Vᵀ,   node i gets  B = U_r √Σ_r / s_i,  A = √Σ_r V_rᵀ    with r = r_i

The paper forms ΔW densely per module. Here it stays factored: the products are stacked exactly
as in FLoRA (rank Σ r_i) and recompressed (strategies/math/lowrank.py: QR + small SVD, or at the
cap Gram matrices + randomized subspace iteration), whose factors come out in descending
singular-value order, so a node's first r_i components are the best rank-r_i approximation of
ΔW (Eckart-Young; at the cap within a fraction of a percent of it) and no (out, in) matrix is
formed.
With a server learning rate η the global moves from ΔW_g towards the mean, exactly:

    ΔW_g ← (1 - η) ΔW_g + η Σ_i w_i s_i B_i A_i
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from strategies.math.factors import Factors, LowRank
from strategies.math.lowrank import Accumulated
from strategies.math.streaming import accumulate_updates


def flexlora_average(
    updates: Sequence[Mapping[str, Factors]],
    weights: Sequence[float],
    *,
    previous: Mapping[str, LowRank],
    server_lr: float = 1.0,
    max_rank: int | None = None,
    tol: float = 0.0,
) -> Accumulated:
    """The new global ΔW in SVD order (B = U√Σ, A = √ΣVᵀ), at rank <= ``max_rank``.

    ``previous`` is the global adapter the nodes started from; it only matters when
    ``server_lr`` is not 1 (the mean of the products replaces it otherwise).
    """
    kept: dict[str, LowRank] = {}
    if server_lr != 1.0:
        kept = {m: (a, (1.0 - server_lr) * b) for m, (a, b) in previous.items()}
    # B_st @ A_st = η Σ_i w_i s_i B_i A_i (+ the kept global), stacked and recompressed per module
    return accumulate_updates(kept, updates, weights, scale=server_lr, max_rank=max_rank, tol=tol)

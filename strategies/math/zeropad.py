"""Zero-padding aggregation of heterogeneous-rank LoRA factors (HetLoRA-style).

Cho et al., "Heterogeneous LoRA for Federated Fine-tuning of On-Device Foundation Models",
EMNLP 2024, Sec. 3 (aggregation by zero-padding; we use the plain weighted average, without
HetLoRA's sparsity weighting or rank self-pruning). With R = max_i r_i:

    A = Σ_i w_i pad(A_i)       pad: rows r_i..R of A_i are zero         (R, in)
    B = Σ_i w_i s_i pad(B_i)   pad: columns r_i..R of B_i are zero      (out, R)

and node i continues from the first r_i components: A[:r_i], B[:, :r_i] / s_i. Like FedIT this
averages the factors, so the global update B·A has cross terms between nodes; in addition the
components beyond a node's rank are averaged with zeros from the smaller nodes. The public
reference code's padding path crashes; this one is checked against hand-computed numbers.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from strategies.math.factors import Factors, LowRank, pad_rank
from strategies.math.flora import check_updates


def zeropad_average(
    updates: Sequence[Mapping[str, Factors]], weights: Sequence[float]
) -> dict[str, LowRank]:
    """Pad every node's factors to the largest rank, average A and s·B; scaling 1 returned."""
    check_updates(updates, weights)
    averaged: dict[str, LowRank] = {}
    for module in sorted(updates[0]):
        rank = max(u[module][0].shape[0] for u in updates)
        in_dim, out_dim = updates[0][module][0].shape[1], updates[0][module][1].shape[0]
        a_sum = np.zeros((rank, in_dim))  # (R, in)
        b_sum = np.zeros((out_dim, rank))  # (out, R)
        for update, weight in zip(updates, weights, strict=True):
            a, b, scaling = update[module]
            a_pad, b_pad = pad_rank(np.asarray(a, np.float64), np.asarray(b, np.float64), rank)
            a_sum += weight * a_pad
            b_sum += (weight * scaling) * b_pad
        averaged[module] = (a_sum, b_sum)
    return averaged

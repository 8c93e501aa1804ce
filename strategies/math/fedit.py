"""FedIT: FedAvg of the LoRA factors A and B, each on its own, as pure numpy functions.

Zhang et al., "Towards Building the Federated GPT: Federated Instruction Tuning", ICASSP 2024
(Shepherd). All nodes share one rank r and continue from the global (A, B); the server averages

    A = Σ_i w_i A_i            (r, in)
    B = Σ_i w_i s_i B_i        (out, r)     (scaling folded into B: the global has scaling 1)

so the global update is B·A = (Σ_i w_i s_i B_i)(Σ_j w_j A_j), which carries the cross terms
s_i B_i A_j (i ≠ j) and differs from the mean of the products Σ_i w_i s_i B_i A_i unless every A_i
is the same (FLoRA, Sec. 3.1). The public reference code averages into a misspelt variable and
returns the first client's factors; this one is checked against a float64 reference.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from strategies.math.factors import Factors, LowRank
from strategies.math.flora import check_updates
from strategies.math.zeropad import zeropad_average


def fedit_average(
    updates: Sequence[Mapping[str, Factors]], weights: Sequence[float]
) -> dict[str, LowRank]:
    """Average A and s·B separately, module by module; every update must have one rank.

    Returns module -> (A, B) in float64 with scaling 1 (B holds Σ_i w_i s_i B_i).
    """
    check_updates(updates, weights)
    for module in sorted(updates[0]):
        ranks = sorted({u[module][0].shape[0] for u in updates})
        if len(ranks) > 1:
            raise ValueError(
                f"FedIT averages A and B entry by entry, but module `{module}` comes in ranks "
                f"{ranks}: give every node one `lora-rank`, or use a strategy that accepts "
                "heterogeneous ranks (flora, flexlora, ffa, zeropad)"
            )
    return zeropad_average(updates, weights)  # one rank: no padding, plain FedAvg

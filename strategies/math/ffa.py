"""FFA-LoRA: A frozen at a public seeded init shared by all nodes, only B trained and averaged.

Sun et al., "Improving LoRA in Privacy-preserving Federated Learning", ICLR 2024, Sec. 4. With A
fixed and the same at every node, averaging B is exact:

    (Σ_i w_i s_i B_i) · A = Σ_i w_i s_i B_i A

Heterogeneous ranks stay exact by nesting (strategies/math/public_a.py): a node of rank r_i uses the
first r_i rows of the shared A (R × in), so its B_i zero-padded to R columns gives the same
product, and the global is (A[:R], B_g) with, for a server learning rate η,

    B_g ← pad(B_g) + η Σ_i w_i s_i pad(B_i)         (out, R),  R = max(r_g, max_i r_i)

The nodes merge the global into their weights and train a fresh B from zero each round, so the
reply B_i is the round's update and η scales it exactly.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from numpy.typing import NDArray

from strategies.math.factors import Factors, LowRank, pad_rank
from strategies.math.flora import check_updates
from strategies.math.public_a import public_lora_a

F64 = NDArray[np.float64]


def ffa_average(
    updates: Sequence[Mapping[str, Factors]],
    weights: Sequence[float],
    *,
    previous: Mapping[str, LowRank],
    seed: int,
    server_lr: float = 1.0,
) -> dict[str, LowRank]:
    """The new global (A[:R], B_g) per module; A is the public A of ``seed``, not the nodes'."""
    check_updates(updates, weights)
    adapter: dict[str, LowRank] = dict(previous)
    for module in sorted(updates[0]):
        in_dim, out_dim = updates[0][module][0].shape[1], updates[0][module][1].shape[0]
        b_g: F64 = np.zeros((out_dim, 0))
        if module in previous:
            b_g = np.asarray(previous[module][1], np.float64)  # (out, r_g)
        rank = max([b_g.shape[1], *(u[module][0].shape[0] for u in updates)])
        a_pub = public_lora_a(module, rank=rank, in_features=in_dim, seed=seed)  # (R, in)
        _, b_new = pad_rank(np.zeros((b_g.shape[1], in_dim)), b_g, rank)  # (out, R)
        for update, weight in zip(updates, weights, strict=True):
            a, b, scaling = update[module]
            _, b_pad = pad_rank(np.asarray(a, np.float64), np.asarray(b, np.float64), rank)
            b_new = b_new + (server_lr * weight * scaling) * b_pad
        adapter[module] = (a_pub, b_new)
    return adapter


def public_a_mismatch(update: Mapping[str, Factors], *, seed: int, atol: float = 1e-6) -> str:
    """Why ``update``'s A is not the public A of ``seed`` (first module found), else ``""``."""
    for module in sorted(update):
        a = np.asarray(update[module][0], np.float64)  # (r_i, in)
        expected = public_lora_a(module, rank=a.shape[0], in_features=a.shape[1], seed=seed)
        if not np.allclose(a, expected, rtol=0.0, atol=atol):
            return (
                f"`{module}` A is not the public seeded A (seed {seed}): ffa needs A frozen at "
                "the shared init; the node trained A or runs another fedlora version"
            )
    return ""

"""FLoRA stacking aggregation, as pure numpy functions.

Wang et al., "FLoRA: Federated Fine-Tuning Large Language Models with Heterogeneous Low-Rank
Adaptations", NeurIPS 2024, Sec. 3.2, Eq. (5)-(6). Client i trains ``A_i`` (r_i x in) and
``B_i`` (out x r_i) with scaling ``s_i = alpha_i / r_i``; the server stacks

    A_st = [w_1 s_1 A_1; ...; w_K s_K A_K]      (rows)        shape (R, in)
    B_st = [B_1, ..., B_K]                       (columns)     shape (out, R)

so that ``B_st @ A_st == sum_i w_i s_i B_i A_i`` exactly, with ``R = sum_i r_i``. Unlike
averaging A and B separately (FedIT), stacking introduces no cross terms ``B_i A_j``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from strategies.math.factors import Factors, check_factors


def stack(updates: Sequence[Mapping[str, Factors]], weights: Sequence[float]) -> dict[str, Factors]:
    """Stack heterogeneous-rank LoRA factors module by module (FLoRA, Eq. 5-6).

    Parameters
    ----------
    updates
        One mapping per client from module name to ``(A, B, scaling)`` with ``A`` of shape
        (r_i, in) and ``B`` of shape (out, r_i). Every client must cover the same modules.
    weights
        One aggregation weight per client, used as given (FLoRA uses ``n_i / sum_j n_j``).

    Returns
    -------
    dict[str, Factors]
        For each module ``(A_st, B_st, 1.0)`` in float64 with
        ``B_st @ A_st == sum_i weights[i] * s_i * B_i @ A_i``.
    """
    check_updates(updates, weights)
    stacked: dict[str, Factors] = {}
    for module in sorted(updates[0]):
        a_blocks = []
        b_blocks = []
        for update, weight in zip(updates, weights, strict=True):
            a, b, scaling = update[module]
            a_blocks.append((weight * scaling) * np.asarray(a, dtype=np.float64))  # (r_i, in)
            b_blocks.append(np.asarray(b, dtype=np.float64))  # (out, r_i)
        a_st = np.concatenate(a_blocks, axis=0)  # (R, in)
        b_st = np.concatenate(b_blocks, axis=1)  # (out, R)
        stacked[module] = (a_st, b_st, 1.0)
    return stacked


def check_updates(updates: Sequence[Mapping[str, Factors]], weights: Sequence[float]) -> None:
    problems: list[str] = []
    if not updates:
        raise ValueError("`updates` is empty: stacking needs at least one client update")
    if len(updates) != len(weights):
        raise ValueError(
            f"`weights` has {len(weights)} entries for {len(updates)} updates: pass one per update"
        )
    for i, weight in enumerate(weights):
        if not (math.isfinite(weight) and weight >= 0):
            problems.append(f"`weights[{i}]` is {weight!r}: use a finite number >= 0")
    modules = set(updates[0])
    for i, update in enumerate(updates):
        if set(update) != modules:
            diff = sorted(set(update) ^ modules)[:3]
            problems.append(f"`updates[{i}]` covers other modules than `updates[0]` (e.g. {diff})")
            continue
        for module, factors in update.items():
            problems.extend(check_factors(module, factors, where=f"updates[{i}]"))
    if not problems:
        problems.extend(_check_dims_agree(updates))
    if problems:
        raise ValueError("cannot stack LoRA updates:\n  " + "\n  ".join(problems))


def _check_dims_agree(updates: Sequence[Mapping[str, Factors]]) -> list[str]:
    problems = []
    for module, (a0, b0, _) in updates[0].items():
        for i, update in enumerate(updates[1:], start=1):
            a, b, _ = update[module]
            if a.shape[1] != a0.shape[1] or b.shape[0] != b0.shape[0]:
                problems.append(
                    f"`updates[{i}]['{module}']` is {b.shape[0]}x{a.shape[1]}, "
                    f"`updates[0]` has {b0.shape[0]}x{a0.shape[1]}: use one base model"
                )
    return problems

"""FLoRA stacking aggregation, as pure numpy functions.

Wang et al., "FLoRA: Federated Fine-Tuning Large Language Models with Heterogeneous Low-Rank
Adaptations", NeurIPS 2024, Sec. 3.2, Eq. (5)-(6). Client i trains ``A_i`` (r_i x in) and
``B_i`` (out x r_i) with scaling ``s_i = alpha_i / r_i``; the server stacks

    A_st = [w_1 s_1 A_1; ...; w_K s_K A_K]      (rows)        shape (R, in)
    B_st = [B_1, ..., B_K]                       (columns)     shape (out, R)

so that ``B_st @ A_st == sum_i w_i s_i B_i A_i`` exactly, with ``R = sum_i r_i``. Unlike
averaging A and B separately (FedIT), stacking introduces no cross terms ``B_i A_j``.

Continuing nodes (:func:`stack_changes`): a node that starts its LoRA at ``(A_i0, B_i0)`` (the
first k_i <= r_i components of the global adapter, B scaled by ``1 / s_i``) instead of B = 0 must
not be credited with its start twice. Its *change* ``s_i (B_i A_i - B_i0 A_i0)`` is the rank
<= r_i + k_i block

    [B_i, -B_i0] @ [A_i; A_i0]

and the stacked changes ``sum_i w_i s_i (B_i A_i - B_i0 A_i0)`` are exact as above.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from strategies.math.factors import Array, Factors, LowRank, check_factors


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


def node_start(
    global_adapter: Mapping[str, LowRank],
    *,
    rank: int,
    scaling: float,
    wire_dtype: type = np.float32,
) -> dict[str, LowRank]:
    """Where a continuing node of ``rank`` and ``scaling`` starts its LoRA, module by module.

    Parameters
    ----------
    global_adapter
        Module -> ``(A_g, B_g)`` (scaling 1) as the server holds it.
    rank, scaling
        The node's LoRA rank r_i and scaling s_i = alpha_i / r_i.
    wire_dtype
        The dtype the global adapter travels in; the start is computed as the node computes it
        (client/model/node_mode.py), so that the change is stacked exactly.

    Returns
    -------
    dict[str, LowRank]
        Module -> ``(A_i0, B_i0)``: the first ``k = min(r_i, r_g)`` rows of ``A_g`` (k, in) and
        columns of ``B_g`` divided by ``s_i`` (out, k), so ``s_i B_i0 A_i0 = B_g[:, :k] A_g[:k]``.
    """
    start: dict[str, LowRank] = {}
    for module, (a_g, b_g) in global_adapter.items():
        k = min(rank, a_g.shape[0])
        a0: Array = np.asarray(a_g[:k], dtype=wire_dtype)  # (k, in)
        b0: Array = (np.asarray(b_g[:, :k], dtype=wire_dtype) / scaling).astype(wire_dtype)
        start[module] = (a0, b0)
    return start


def stack_changes(
    updates: Sequence[Mapping[str, Factors]],
    starts: Sequence[Mapping[str, LowRank]],
    weights: Sequence[float],
) -> dict[str, Factors]:
    """Stack the nodes' changes from where they started (module doc): ``[B_i, -B_i0]``,
    ``[A_i; A_i0]``.

    Parameters
    ----------
    updates
        As in :func:`stack`: module -> ``(A_i, B_i, s_i)`` after training.
    starts
        One mapping per update, module -> ``(A_i0, B_i0)`` (k_i rows, k_i columns) in the node's
        scale (:func:`node_start`); a module absent from it started at B = 0.
    weights
        One aggregation weight per update.

    Returns
    -------
    dict[str, Factors]
        Module -> ``(A_st, B_st, 1.0)`` in float64 with
        ``B_st @ A_st == sum_i w_i s_i (B_i A_i - B_i0 A_i0)``.
    """
    if len(starts) != len(updates):
        raise ValueError(
            f"`starts` has {len(starts)} entries for {len(updates)} updates: pass one per update"
        )
    blocks: list[dict[str, Factors]] = []
    for update, start in zip(updates, starts, strict=True):
        block: dict[str, Factors] = {}
        for module, (a, b, scaling) in update.items():
            if module not in start or start[module][0].shape[0] == 0:
                block[module] = (a, b, scaling)
                continue
            a0, b0 = start[module]
            a_cat = np.concatenate([np.asarray(a, np.float64), np.asarray(a0, np.float64)])
            b_cat = np.concatenate([np.asarray(b, np.float64), -np.asarray(b0, np.float64)], 1)
            block[module] = (a_cat, b_cat, scaling)  # (r_i + k_i, in), (out, r_i + k_i)
        blocks.append(block)
    return stack(blocks, weights)


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

"""LoRA factors on the wire: peft key names <-> per-module ``(A, B, scaling)``.

Factors are identified by their peft key names (``<module>.lora_A.weight`` of shape (r, in) and
``<module>.lora_B.weight`` of shape (out, r)), never by which dimension equals r: with partial
participation or r == in that guess silently swaps A and B.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from numpy.typing import NDArray

Array = NDArray[np.floating]
Factors = tuple[Array, Array, float]  # (A: (r, in), B: (out, r), scaling)
LowRank = tuple[Array, Array]  # (A: (k, in), B: (out, k)), scaling 1

A_SUFFIX = ".lora_A.weight"
B_SUFFIX = ".lora_B.weight"


def check_factors(module: str, factors: Factors, *, where: str) -> list[str]:
    """Return the problems with one module's ``(A, B, scaling)``; empty when it is well formed."""
    a, b, scaling = factors
    if a.ndim != 2 or b.ndim != 2:
        return [f"`{where}['{module}']`: A and B must be matrices, got shapes {a.shape}, {b.shape}"]
    problems = []
    if a.shape[0] != b.shape[1]:
        problems.append(
            f"`{where}['{module}']`: A is {a.shape} and B is {b.shape}; need A (r, in), B (out, r)"
        )
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        problems.append(f"`{where}['{module}']`: factors contain NaN or inf")
    if not (np.isfinite(scaling) and scaling > 0):
        problems.append(f"`{where}['{module}']`: scaling is {scaling!r}; use alpha / r > 0")
    return problems


def split_factor_keys(arrays: Mapping[str, Array]) -> tuple[dict[str, LowRank], list[str]]:
    """Group ``<module>.lora_A.weight``/``<module>.lora_B.weight`` pairs by module.

    Returns
    -------
    (pairs, problems)
        ``pairs`` maps module -> (A, B); ``problems`` lists unknown keys and unpaired factors.
    """
    a_by_module: dict[str, Array] = {}
    b_by_module: dict[str, Array] = {}
    problems = []
    for key, value in arrays.items():
        if key.endswith(A_SUFFIX):
            a_by_module[key.removesuffix(A_SUFFIX)] = value
        elif key.endswith(B_SUFFIX):
            b_by_module[key.removesuffix(B_SUFFIX)] = value
        else:
            problems.append(f"key `{key}` is not a LoRA factor (`*{A_SUFFIX}` or `*{B_SUFFIX}`)")
    for module in sorted(set(a_by_module) ^ set(b_by_module)):
        missing = B_SUFFIX if module in a_by_module else A_SUFFIX
        problems.append(f"module `{module}` lacks its `{missing}` factor")
    pairs = {m: (a_by_module[m], b_by_module[m]) for m in a_by_module if m in b_by_module}
    return pairs, problems


def join_factor_keys(pairs: Mapping[str, LowRank]) -> dict[str, Array]:
    """Inverse of :func:`split_factor_keys`: module -> (A, B) to flat peft key names."""
    flat: dict[str, Array] = {}
    for module in sorted(pairs):
        a, b = pairs[module]
        flat[module + A_SUFFIX] = a
        flat[module + B_SUFFIX] = b
    return flat


def truncate(pairs: Mapping[str, LowRank], rank: int) -> dict[str, LowRank]:
    """The first ``rank`` components of every module: A's first rows, B's first columns."""
    if rank < 0:
        raise ValueError(f"`rank` is {rank}: use an integer >= 0")
    return {m: (a[:rank], b[:, :rank]) for m, (a, b) in pairs.items()}  # (k, in), (out, k)


def pad_rank(a: Array, b: Array, rank: int) -> tuple[Array, Array]:
    """Zero-pad A (r, in) to (rank, in) and B (out, r) to (out, rank); exact: B'A' = BA."""
    extra = rank - a.shape[0]
    if extra < 0:
        raise ValueError(f"cannot pad rank {a.shape[0]} down to {rank}: use rank >= {a.shape[0]}")
    return np.pad(a, ((0, extra), (0, 0))), np.pad(b, ((0, 0), (0, extra)))

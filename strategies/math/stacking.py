"""One module's stacked round, folded node by node as the nodes sent it.

FLoRA appends ``Σ_i c_i B_i A_i`` (``c_i = η w_i s_i``) to the global ``B_g A_g``; continuing
FLoRA appends each node's change, ``c_i (B_i A_i - B_i0 A_i0)`` (:mod:`strategies.math.flora`).
A :class:`ModuleStack` holds that as

    M = B diag(c) A,   B = [B_g, B_1, ..., B_K],   A = [A_g; A_1; ...; A_K]

with the nodes' factors copied once, in the dtype they arrived in (float32 off the wire), the
coefficients kept aside (nothing is rounded by the scaling), and the small part (the global and
the starts) also kept exactly in float64: no float64 copy of every node's every module exists.

Continuing nodes. Node i started at ``(A_0, B_0)`` (its first k = k_i components; the rest
started fresh, B = 0) and moved by ``δA_i = A_i[:k] - A_0``, ``δB_i = B_i[:, :k] - B_0``:

    B_i A_i - B_0 A_0 = δB_i δA_i + B_i[:, k:] A_i[k:]  +  B_0 δA_i + δB_i A_0

The first two terms are node i's block with its factors replaced by their movement (rank r_i):
the size of what the node learnt, not of the global it started from, so no large blocks cancel
(which float32 Grams could not resolve), held in float64, where the differences are exact. A
node's start is elementwise in the global (:func:`node_start`: the first k rows of A_g and
columns of B_g over s, in the wire dtype), so every node of scaling s starts from a prefix of one
``(A_0, B_0)`` and the last two terms collapse exactly into two blocks per scaling (usually one):

    Σ_i c_i (B_0 δA_i + δB_i A_0) = B_0 ΔA + ΔB A_0,    ΔA = Σ_i c_i δA_i,  ΔB = Σ_i c_i δB_i

The stack's rank is ``k_g + Σ r_i + 2 max k_i`` per scaling, against ``k_g + Σ (r_i + k_i)``
for one block per node's start.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from strategies.math.factors import Array, Factors, LowRank
from strategies.math.flora import node_start

F64 = NDArray[np.float64]


@dataclass(frozen=True)
class ModuleStack:
    """``M = B diag(coef) A`` for one module, the first ``small`` rows exact in float64.

    ``a`` and ``b`` hold every row and column in the nodes' dtype (at least float32): the small
    part rounded to it, then the nodes' blocks as sent. ``a_small``/``b_small`` are the small
    part in float64 (coefficient 1), used wherever the exact stack is needed.
    """

    a: Array  # (R, in): [A_g; A_0; A_1; ...; A_K], unscaled
    b: Array  # (out, R): [B_g, -B_0, B_1, ..., B_K]
    coef: F64  # (R,): 1 for the small part, c_i for node i's rows
    a_small: F64  # (k_s, in)
    b_small: F64  # (out, k_s)

    @property
    def rank(self) -> int:
        return int(self.a.shape[0])

    @property
    def small(self) -> int:
        return int(self.a_small.shape[0])

    def dense_factors(self) -> tuple[F64, F64]:
        """The float64 stack ``A (R, in)``, ``B (out, R)`` with ``B @ A == M`` (the scaling folded
        into A, as :func:`strategies.math.flora.stack` folds it)."""
        a = np.multiply(self.a, self.coef[:, None], dtype=np.float64)  # (R, in)
        b = self.b.astype(np.float64)  # (out, R)
        a[: self.small] = self.a_small
        b[:, : self.small] = self.b_small
        return a, b

    def product(self, *, chunk: int = 1024) -> F64:
        """``M`` (out, in) in float64, ``chunk`` stacked rows at a time (for R >= min(out, in),
        where the dense product is cheaper than factoring the stack)."""
        m = self.b_small @ self.a_small  # (out, in)
        for start in range(self.small, self.rank, chunk):
            rows = slice(start, min(start + chunk, self.rank))
            m += self.b[:, rows].astype(np.float64) @ np.multiply(
                self.a[rows], self.coef[rows, None], dtype=np.float64
            )
        product: F64 = m
        return product


def module_stack(
    previous: LowRank | None,
    blocks: Sequence[Factors],
    starts: Sequence[LowRank] = (),
    *,
    dtype: type | None = None,
) -> ModuleStack:
    """Fold the global pair, extra small pairs and the nodes' blocks into one module's stack.

    Parameters
    ----------
    previous
        The global ``(A_g (k, in), B_g (out, k))``, or None.
    blocks
        ``(A_i (r_i, in), B_i (out, r_i), c_i)`` per node; ``c_i`` multiplies ``B_i A_i``.
    starts
        Extra pairs ``(A (k, in), B (out, k))`` of the small part, added as they are (e.g. the
        collapsed starts).
    dtype
        The nodes' part's dtype (default: theirs, at least float32).
    """
    small = ([previous] if previous is not None else []) + list(starts)
    pairs = [(a, b) for a, b in small] + [(a, b) for a, b, _ in blocks]
    in_dim, out_dim = pairs[0][0].shape[1], pairs[0][1].shape[0]
    a_small = np.concatenate(
        [np.zeros((0, in_dim))] + [np.asarray(a, np.float64) for a, _ in small]
    )
    b_small = np.concatenate(
        [np.zeros((out_dim, 0))] + [np.asarray(b, np.float64) for _, b in small], axis=1
    )
    if dtype is None:
        dtype = np.result_type(np.float32, *(x.dtype for a, b, _ in blocks for x in (a, b))).type
    rank = sum(a.shape[0] for a, _ in pairs)
    a_all = np.empty((rank, in_dim), dtype=dtype)  # (R, in)
    b_all = np.empty((out_dim, rank), dtype=dtype)  # (out, R)
    coef = np.ones(rank)
    row = 0
    for i, (a, b) in enumerate(pairs):
        span = slice(row, row + a.shape[0])
        a_all[span] = a
        b_all[:, span] = b
        if i >= len(small):
            coef[span] = blocks[i - len(small)][2]
        row = span.stop
    return ModuleStack(a_all, b_all, coef, a_small, b_small)


def _moved(
    updates: Sequence[Factors],
    coefs: Sequence[float],
    ks: Sequence[int],
    starts: dict[float, tuple[F64, ...]],
    *,
    shape: tuple[int, int],
) -> tuple[dict[float, F64], dict[float, F64]]:
    """``Σ c_i δA_i`` (k, in) and ``Σ c_i δB_i`` (out, k) per scaling, exact in float64."""
    out_dim, in_dim = shape
    widest = {s: a.shape[0] for s, (a, _) in starts.items()}
    moved_a = {s: np.zeros((k, in_dim)) for s, k in widest.items()}
    moved_b = {s: np.zeros((out_dim, k)) for s, k in widest.items()}
    buf_a, buf_b = np.empty((max(ks), in_dim)), np.empty((out_dim, max(ks)))  # no temporaries
    for (a, b, scaling), c, k in zip(updates, coefs, ks, strict=True):
        a_0, b_0 = starts[scaling]
        np.subtract(a[:k], a_0[:k], out=buf_a[:k])  # δA_i, exact in float64
        np.subtract(b[:, :k], b_0[:, :k], out=buf_b[:, :k])
        buf_a[:k] *= c
        buf_b[:, :k] *= c
        moved_a[scaling][:k] += buf_a[:k]
        moved_b[scaling][:, :k] += buf_b[:, :k]
    return moved_a, moved_b


def change_rank(previous: LowRank | None, updates: Sequence[Factors]) -> int:
    """The rank R of :func:`change_stack`'s stack, without building it: ``k_g + Σ r_i`` plus
    two blocks of the widest start per scaling."""
    ranks = int(sum(a.shape[0] for a, _, _ in updates))
    if previous is None or previous[0].shape[0] == 0:
        return ranks
    widest: dict[float, int] = {}
    for a, _, scaling in updates:
        widest[scaling] = max(widest.get(scaling, 0), min(a.shape[0], previous[0].shape[0]))
    return int(previous[0].shape[0] + ranks + 2 * sum(widest.values()))


def change_stack(
    previous: LowRank | None,
    updates: Sequence[Factors],
    coefs: Sequence[float],
    *,
    wire_dtype: type = np.float32,
    dtype: type = np.float64,
) -> ModuleStack:
    """One module's stack of continuing nodes' changes, ``B_g A_g + Σ_i c_i (B_i A_i - B_i0 A_i0)``
    (module doc); without a global, the nodes started at B = 0.

    Parameters
    ----------
    previous
        The global ``(A_g, B_g)`` the nodes started from, or None.
    updates
        ``(A_i (r_i, in), B_i (out, r_i), s_i)`` per node after training; node i started at
        :func:`strategies.math.flora.node_start` ``(previous, rank=r_i, scaling=s_i)``.
    coefs
        ``c_i`` per node.
    wire_dtype
        The dtype the global reached the nodes in (their start is rounded to it).
    dtype
        The nodes' part's dtype: float64 holds their movements exactly; float32 rounds them
        once and sums them into the collapsed starts by one product per scaling (for the range
        route, which resolves far less than that rounding).
    """
    blocks = [(a, b, c) for (a, b, _), c in zip(updates, coefs, strict=True)]
    if previous is None or previous[0].shape[0] == 0:
        return module_stack(previous, blocks)
    ks = [min(a.shape[0], previous[0].shape[0]) for a, _, _ in updates]  # k_i
    widest: dict[float, int] = {}  # s -> the widest start among the nodes of scaling s
    for k, (_, _, scaling) in zip(ks, updates, strict=True):
        widest[scaling] = max(widest.get(scaling, 0), k)
    starts = {  # s -> (A_0, B_0) in float64: every start of scaling s is a prefix of it
        s: tuple(np.asarray(x, np.float64) for x in
                 node_start({"m": previous}, rank=k, scaling=s, wire_dtype=wire_dtype)["m"])
        for s, k in sorted(widest.items())
    }  # fmt: skip
    out_dim, in_dim = previous[1].shape[0], previous[0].shape[1]
    exact = np.dtype(dtype) == np.float64
    if exact:
        moved_a, moved_b = _moved(updates, coefs, ks, starts, shape=(out_dim, in_dim))
    else:  # placeholders: summed below from the stack's own rounded movements
        moved_a = {s: np.zeros((k, in_dim)) for s, k in widest.items()}
        moved_b = {s: np.zeros((out_dim, k)) for s, k in widest.items()}
    pairs = []
    for s in sorted(starts):  # B_0 ΔA_0 and ΔB_0 A_0
        pairs += [(moved_a[s], starts[s][1]), (starts[s][0], moved_b[s])]
    stack = module_stack(previous, blocks, pairs, dtype=dtype)
    row = stack.small
    rounded: dict[float, tuple[Array, Array]] = {
        s: (a_0.astype(dtype), b_0.astype(dtype)) for s, (a_0, b_0) in starts.items()
    }
    weights: dict[float, Array] = {
        s: np.zeros((k, stack.rank), dtype=dtype) for s, k in widest.items()
    }
    for (a, _, scaling), c, k in zip(updates, coefs, ks, strict=True):  # δA_i, δB_i in place
        start_a, start_b = rounded[scaling]  # as the node had it (wire dtype): exact in dtype
        stack.a[row : row + k] -= start_a[:k]
        stack.b[:, row : row + k] -= start_b[:, :k]
        weights[scaling][np.arange(k), row + np.arange(k)] = c  # ΔA = W A, ΔB = B Wᵀ
        row += a.shape[0]
    if not exact:
        first = previous[0].shape[0]
        for s in sorted(starts):  # the pairs' places, in order: [ΔA; A_0], [B_0, ΔB]
            k = widest[s]
            summed_a = weights[s] @ stack.a  # (k, in) = Σ c_i δA_i, one product
            summed_b = stack.b @ weights[s].T  # (out, k) = Σ c_i δB_i
            stack.a[first : first + k] = summed_a
            stack.a_small[first : first + k] = summed_a
            stack.b[:, first + k : first + 2 * k] = summed_b
            stack.b_small[:, first + k : first + 2 * k] = summed_b
            first += 2 * k
    return stack

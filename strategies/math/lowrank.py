"""Exact recompression of a stacked low-rank update, without forming the dense matrix.

The server keeps the accumulated global update ``Delta W = B_g @ A_g`` per module. Each round it
appends the round's stacked factors (rank grows by ``sum_i r_i``) and recompresses:

    B   = Q_B R_B                 QR of B,    Q_B (out, m), R_B (m, R),  m = min(out, R)
    A^T = Q_A R_A                 QR of A^T,  Q_A (in, n),  R_A (n, R),  n = min(in, R)
    R_B R_A^T = U S V^T           SVD of the small (m, n) core
    B' = Q_B U_k S_k^(1/2)        A' = S_k^(1/2) V_k^T Q_A^T

so ``B' @ A'`` is the best rank-k approximation of ``B @ A`` (Eckart-Young) and equals it when k
reaches the numerical rank. Cost is O((out + in) R^2 + R^3); no (out, in) matrix is formed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from strategies.math.factors import Factors, LowRank

F64 = NDArray[np.float64]


@dataclass(frozen=True)
class Recompressed:
    """A recompressed low-rank pair and what the truncation cost."""

    a: F64  # (k, in)
    b: F64  # (out, k)
    singular_values: F64  # all of them, descending
    rank: int
    error: float  # ||BA - B'A'||_F, absolute
    norm: float  # ||BA||_F

    @property
    def relative_error(self) -> float:
        return self.error / self.norm if self.norm > 0 else 0.0


def choose_rank(singular_values: F64, *, max_rank: int | None, tol: float = 0.0) -> int:
    """Number of singular values to keep.

    Drops numerically zero directions (``s <= s_max * eps * len(s)``), then keeps at most
    ``max_rank``; with ``tol > 0`` keeps only as many as needed for a relative Frobenius error
    of at most ``tol``.
    """
    if max_rank is not None and max_rank < 0:
        raise ValueError(f"`max_rank` is {max_rank}: use an integer >= 0 or None for no cap")
    if not (math.isfinite(tol) and 0.0 <= tol < 1.0):
        raise ValueError(f"`tol` is {tol!r}: use a relative error in [0, 1)")
    s = singular_values
    if s.size == 0 or s[0] <= 0:
        return 0
    k = int(np.count_nonzero(s > s[0] * np.finfo(np.float64).eps * s.size))
    if tol > 0:
        # tail[j] = ||s[j:]||: the error of keeping j values
        tail = np.sqrt(np.concatenate([np.cumsum((s**2)[::-1])[::-1], [0.0]]))
        k = min(k, int(np.argmax(tail <= tol * tail[0])))
    if max_rank is not None:
        k = min(k, max_rank)
    return k


def recompress(a: F64, b: F64, *, max_rank: int | None, tol: float = 0.0) -> Recompressed:
    """Recompress ``B @ A`` (A: (R, in), B: (out, R)) to rank <= ``max_rank`` via QR + small SVD."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[0] != b.shape[1]:
        raise ValueError(f"need A (R, in) and B (out, R), got A {a.shape} and B {b.shape}")
    out_dim, in_dim = b.shape[0], a.shape[1]
    if a.shape[0] == 0:
        empty = np.zeros(0)
        return Recompressed(np.zeros((0, in_dim)), np.zeros((out_dim, 0)), empty, 0, 0.0, 0.0)
    q_b, r_b = np.linalg.qr(b)  # (out, m), (m, R)
    q_a, r_a = np.linalg.qr(a.T)  # (in, n), (n, R)
    u, s, vt = np.linalg.svd(r_b @ r_a.T)  # core (m, n)
    k = choose_rank(s, max_rank=max_rank, tol=tol)
    root = np.sqrt(s[:k])
    new_b = (q_b @ u[:, :k]) * root  # (out, k)
    new_a = (root[:, None] * vt[:k]) @ q_a.T  # (k, in)
    error = float(np.sqrt(np.sum(s[k:] ** 2)))
    norm = float(np.sqrt(np.sum(s**2)))
    return Recompressed(new_a, new_b, s, k, error, norm)


@dataclass(frozen=True)
class Accumulated:
    """The new global adapter and per-module truncation report of one round."""

    adapter: dict[str, LowRank]
    reports: dict[str, Recompressed]

    @property
    def relative_error(self) -> float:
        """Truncation error over all modules, relative to the untruncated update's norm."""
        err = math.sqrt(sum(r.error**2 for r in self.reports.values()))
        norm = math.sqrt(sum(r.norm**2 for r in self.reports.values()))
        return err / norm if norm > 0 else 0.0

    @property
    def max_rank(self) -> int:
        return max((r.rank for r in self.reports.values()), default=0)


def accumulate(
    global_adapter: Mapping[str, LowRank],
    round_update: Mapping[str, Factors],
    *,
    max_rank: int | None,
    tol: float = 0.0,
) -> Accumulated:
    """Append a round's factors to the global adapter and recompress each module.

    ``new B @ new A ~= B_g @ A_g + s * B_r @ A_r`` (exact when ``max_rank`` reaches the rank).
    Modules absent from ``round_update`` keep their global factors unchanged.
    """
    adapter: dict[str, LowRank] = dict(global_adapter)
    reports: dict[str, Recompressed] = {}
    for module, (a_r, b_r, scaling) in round_update.items():
        a_parts = [scaling * np.asarray(a_r, dtype=np.float64)]  # (R, in)
        b_parts = [np.asarray(b_r, dtype=np.float64)]  # (out, R)
        if module in global_adapter:
            a_g, b_g = global_adapter[module]
            a_parts.insert(0, np.asarray(a_g, dtype=np.float64))
            b_parts.insert(0, np.asarray(b_g, dtype=np.float64))
        a_cat = np.concatenate(a_parts, axis=0)  # (R_g + R, in)
        b_cat = np.concatenate(b_parts, axis=1)  # (out, R_g + R)
        report = recompress(a_cat, b_cat, max_rank=max_rank, tol=tol)
        adapter[module] = (report.a, report.b)
        reports[module] = report
    return Accumulated(adapter, reports)

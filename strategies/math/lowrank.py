"""Recompression of a stacked low-rank update, without forming the dense matrix.

The server keeps the accumulated global update ``Delta W = B_g @ A_g`` per module. Each round it
appends the round's stacked factors (rank grows by ``sum_i r_i``) and recompresses. Two routes:

Exact (``method="qr"``), when the cap keeps every direction or the fast route declines:

    B   = Q_B R_B                 QR of B,    Q_B (out, m), R_B (m, R),  m = min(out, R)
    A^T = Q_A R_A                 QR of A^T,  Q_A (in, n),  R_A (n, R),  n = min(in, R)
    R_B R_A^T = U S V^T           SVD of the small (m, n) core
    B' = Q_B U_k S_k^(1/2)        A' = S_k^(1/2) V_k^T Q_A^T

so ``B' @ A'`` is the best rank-k approximation of ``B @ A`` (Eckart-Young) and equals it when k
reaches the numerical rank. Cost O((out + in) R^2 + R^3).

At the cap (``method="gram"``), when only ``k`` of ``R >= 2 (k + p)`` directions are kept: Gram
matrices and randomized subspace iteration (:mod:`strategies.math.sketch`, Halko-Martinsson-Tropp
2011), O((out + in) R^2 / 2 + R^2 l) with ``l = k + p``, no R^3 term; its truncation error is
within a fraction of a percent of Eckart-Young's and reported exactly as the QR route's.
On a round's stack as the nodes sent it (:func:`recompress_stack`, ``method="gram32"``): the
same with the nodes' Gram blocks in float32 (:mod:`strategies.math.gram32`), the reported error
certified to 0.5%. Neither forms an (out, in) matrix, except for a stack at least as wide as
the module (``method="dense"``), where forming it is the cheaper way.

At the cap without an energy tolerance (``tol = 0``, the default), :func:`recompress_stack` takes
a faster route (``method="range"``, :mod:`strategies.math.rangefinder`): a randomized range
finder on products with the stack, O((out + in) R l) per pass and no R² term at any R, with the
energy outside the kept basis *estimated* (Hutch++, unbiased, its standard error in
``error_sd``). With ``tol > 0`` the rank depends on the error, so the certified routes decide.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np
from numpy.typing import NDArray

from strategies.math.factors import Factors, LowRank
from strategies.math.gram32 import stack_leading
from strategies.math.rangefinder import KRYLOV_OVERSAMPLE, range_leading
from strategies.math.sketch import RESOLVE, Leading, dense_leading, gram_leading
from strategies.math.stacking import ModuleStack

F64 = NDArray[np.float64]
Method = Literal["qr", "gram", "gram32", "dense", "range"]
OVERSAMPLE = 16  # p: extra directions the Gram route carries beyond the cap (HMT Sec. 4.2)
RANGE_FROM = 8  # the range route from R >= RANGE_FROM (k + p): below, the certified ones cost less


@dataclass(frozen=True)
class Recompressed:
    """A recompressed low-rank pair and what the truncation cost."""

    a: F64  # (k, in)
    b: F64  # (out, k)
    singular_values: F64  # descending: all of them ("qr"), the leading l = k + p ("gram")
    rank: int
    error: float  # ||BA - B'A'||_F, absolute
    norm: float  # ||BA||_F
    method: Method = "qr"
    stacked_rank: int = 0  # R: the rank of the stack that was recompressed
    error_sd: float = 0.0  # standard error of ``error`` where it is estimated ("range")
    dropped_sd: float = 0.0  # standard error of ``error²`` where it is estimated

    @property
    def relative_error(self) -> float:
        return self.error / self.norm if self.norm > 0 else 0.0

    @property
    def estimated(self) -> bool:
        """Whether ``error`` and ``norm`` are estimates (Hutch++, unbiased in ``error²``)."""
        return self.method == "range"


def choose_rank(
    singular_values: F64, *, max_rank: int | None, tol: float = 0.0, energy: float | None = None
) -> int:
    """Number of singular values to keep.

    Drops numerically zero directions (``s <= s_max * eps * len(s)``), then keeps at most
    ``max_rank``; with ``tol > 0`` keeps only as many as needed for a relative Frobenius error
    of at most ``tol``. ``energy`` is ``||M||_F^2`` when ``singular_values`` holds only the
    leading values of ``M`` (default: their squares' sum, i.e. all of them).
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
        # tail[j]: the error of keeping j values, ||s[j:]|| (or sqrt(energy - ||s[:j]||^2))
        total = float(np.sum(s**2)) if energy is None else energy
        kept = np.concatenate([[0.0], np.cumsum(s**2)])
        tail = np.sqrt(np.clip(total - kept, 0.0, None))
        met = tail <= tol * math.sqrt(total)
        k = min(k, int(np.argmax(met)) if met.any() else s.size)
    if max_rank is not None:
        k = min(k, max_rank)
    return k


def recompress(
    a: F64, b: F64, *, max_rank: int | None, tol: float = 0.0, seed: int = 0
) -> Recompressed:
    """Recompress ``B @ A`` (A: (R, in), B: (out, R)) to rank <= ``max_rank``.

    Exact (QR + small SVD) when the cap keeps most directions; through Gram matrices and
    randomized subspace iteration when ``2 (max_rank + p) <= R < min(out, in)`` (below that the
    QR route is as fast: its cost over the Gram route's is about ``4 / (1 + 4 l / R)``), unless
    the dropped energy is too small for a Gram to resolve, where it falls back to the exact
    route.

    Parameters
    ----------
    a, b
        The stacked factors, A (R, in) and B (out, R).
    max_rank
        The cap ``k`` (None: keep every numerically nonzero direction).
    tol
        Keep only as many directions as a relative Frobenius error of ``tol`` needs (0: off).
    seed
        Seed of the Gram route's Gaussian test matrix: equal inputs give equal factors.

    Returns
    -------
    Recompressed
        ``B' (out, k)``, ``A' (k, in)`` with balanced norms and ``B'A'`` the best rank-k
        approximation (exact route) or within a fraction of a percent of it (``"gram"``); the
        error ``||BA - B'A'||_F`` of what is returned and ``||BA||_F`` (to rounding on the QR
        route; on the Gram route the rounding floor is held below 1% of the dropped energy, so
        the error is good to 0.5% at worst, ~1e-8 in practice); ``method``: the route that ran.
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[0] != b.shape[1]:
        raise ValueError(f"need A (R, in) and B (out, R), got A {a.shape} and B {b.shape}")
    choose_rank(np.zeros(0), max_rank=max_rank, tol=tol)  # checks the settings
    stacked = a.shape[0]
    if max_rank is not None and 2 * (max_rank + OVERSAMPLE) <= stacked < min(
        b.shape[0], a.shape[1]
    ):
        found = _gram_recompress(a, b, max_rank=max_rank, tol=tol, seed=seed)
        if found is not None:
            return replace(found, stacked_rank=stacked)
    return recompress_exact(a, b, max_rank=max_rank, tol=tol)


def recompress_exact(a: F64, b: F64, *, max_rank: int | None, tol: float) -> Recompressed:
    """The exact route: QR of B and of Aᵀ, SVD of the small (m, n) core (see the module).

    Parameters and result as :func:`recompress`; ``singular_values`` holds all of them.
    """
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
    return Recompressed(new_a, new_b, s, k, error, norm, stacked_rank=a.shape[0])


def _gram_recompress(
    a: F64, b: F64, *, max_rank: int, tol: float, seed: int
) -> Recompressed | None:
    """The route at the cap; ``None`` where the Gram cannot resolve the dropped energy."""
    lead = gram_leading(a, b, rank=max_rank, width=max_rank + OVERSAMPLE, seed=seed)
    return _kept(lead, max_rank=max_rank, tol=tol, method="gram")


def _kept(
    lead: Leading | None, *, max_rank: int, tol: float, method: Method
) -> Recompressed | None:
    """The leading ``k`` of ``lead`` as factors; ``None`` unless the dropped energy is resolved
    (above ``RESOLVE`` times the energy's rounding bound)."""
    if lead is None:
        return None
    k = choose_rank(lead.s, max_rank=max_rank, tol=tol, energy=lead.energy)
    dropped = lead.energy - float(np.sum(lead.s[:k] ** 2))  # Pythagoras: B'A' projects M
    if dropped <= RESOLVE * lead.floor:
        return None  # nearly lossless, ill-conditioned or cancelling: a finer route decides
    root = np.sqrt(lead.s[:k])
    new_b = (lead.q @ lead.u[:, :k]) * root  # (out, k)
    new_a = (lead.u[:, :k].T @ lead.c) / root[:, None]  # (k, in) = S^-1/2 Uᵀ Qᵀ M
    error = math.sqrt(dropped)
    sd = lead.energy_sd / (2 * error)  # d sqrt(x) = dx / (2 sqrt(x))
    return Recompressed(new_a, new_b, lead.s, k, error, math.sqrt(lead.energy), method,
                        error_sd=sd, dropped_sd=lead.energy_sd)  # fmt: skip


def recompress_stack(
    stack: ModuleStack,
    *,
    max_rank: int | None,
    tol: float = 0.0,
    seed: int = 0,
    certified: bool = False,
) -> Recompressed:
    """:func:`recompress` of one module's stack as the nodes sent it.

    At the cap with ``tol = 0`` and not ``certified``: the range finder
    (:mod:`strategies.math.rangefinder`, ``method="range"``), the truncation error within 1% of
    Eckart-Young's and the reported error an unbiased estimate (in ``error²``) with its standard
    error ``error_sd``. With ``tol > 0`` or ``certified``: at the cap the Grams are formed in
    float32 (:mod:`strategies.math.gram32`: the reported error is within 0.5% of the returned
    factors' true error, guaranteed); where that cannot
    resolve the dropped energy, the float64 Gram route, then the exact route, as
    :func:`recompress`. A stack at least as wide as the module (R >= min(out, in), e.g. 1000
    rank-16 nodes on 4096 × 4096) forms ``M`` in float64 and runs the same subspace iteration
    on it, with ``‖M‖_F²`` exact. Below the cap: the exact route on the float64 stack.
    """
    out_dim, in_dim = stack.b.shape[0], stack.a.shape[1]
    if max_rank is not None and not (tol > 0 or certified):
        found = estimate_stack(stack, max_rank=max_rank, seed=seed)
        if found is not None:
            return found
    if max_rank is not None and 2 * (max_rank + OVERSAMPLE) <= stack.rank < min(out_dim, in_dim):
        lead = stack_leading(stack, rank=max_rank, width=max_rank + OVERSAMPLE, seed=seed)
        found = _kept(lead, max_rank=max_rank, tol=tol, method="gram32")
        if found is not None:
            return replace(found, stacked_rank=stack.rank)
    if max_rank is not None and stack.rank >= min(out_dim, in_dim) > 2 * (max_rank + OVERSAMPLE):
        m = stack.product()  # (out, in): cheaper than QR of a stack wider than M
        lead = dense_leading(m, rank=max_rank, width=max_rank + OVERSAMPLE, seed=seed)
        found = _kept(lead, max_rank=max_rank, tol=tol, method="dense")
        if found is not None:
            return replace(found, stacked_rank=stack.rank)
    a, b = stack.dense_factors()
    return recompress(a, b, max_rank=max_rank, tol=tol, seed=seed)


def range_applies(rank: int, out_dim: int, in_dim: int, *, max_rank: int) -> bool:
    """Whether :func:`estimate_stack` takes a stack of ``rank`` on an (out, in) module."""
    width = max_rank + OVERSAMPLE
    return rank >= RANGE_FROM * width and min(out_dim, in_dim) >= 4 * width


def estimate_stack(stack: ModuleStack, *, max_rank: int, seed: int = 0) -> Recompressed | None:
    """The range route alone (:mod:`strategies.math.rangefinder`, ``method="range"``): at the
    cap, the truncation error within 1% of Eckart-Young's, the reported error estimated
    (unbiased in ``error²``, standard error ``error_sd``). ``None`` where the certified routes
    cost no more (``R < RANGE_FROM (max_rank + p)``: the Grams' ``(out + in) R² / 2`` is below
    a few Krylov steps' ``(out + in) R l`` each), where the module is too small for a Krylov
    basis of a few blocks (``min(out, in) < 4 (max_rank + p)``), or where it declines (a nearly
    lossless cap)."""
    if not range_applies(stack.rank, stack.b.shape[0], stack.a.shape[1], max_rank=max_rank):
        return None
    lead = range_leading(stack, rank=max_rank, width=max_rank + KRYLOV_OVERSAMPLE, seed=seed)
    found = _kept(lead, max_rank=max_rank, tol=0.0, method="range")
    return None if found is None else replace(found, stacked_rank=stack.rank)


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

    @property
    def estimated(self) -> bool:
        """Whether :attr:`relative_error` is an estimate (a module took the "range" route)."""
        return any(r.estimated for r in self.reports.values())

    @property
    def relative_error_sd(self) -> float:
        """Standard error of an estimated :attr:`relative_error` (0 where it is exact): the
        modules' independent estimates of the dropped energy E (and so of ‖ΔW‖² = K + E),
        through ``d sqrt(E / (K + E)) = K dE / (2 sqrt(E / (K + E)) (K + E)²)``."""
        dropped = sum(r.error**2 for r in self.reports.values())
        total = sum(r.norm**2 for r in self.reports.values())
        var = sum(r.dropped_sd**2 for r in self.reports.values())
        if not (dropped > 0 and total > 0):
            return 0.0
        kept = total - dropped
        return kept * math.sqrt(var) / (2 * math.sqrt(dropped / total) * total**2)


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
        a_cat, b_cat = _fold(global_adapter.get(module), [(a_r, b_r, scaling)])
        report = recompress(a_cat, b_cat, max_rank=max_rank, tol=tol)
        adapter[module] = (report.a, report.b)
        reports[module] = report
    return Accumulated(adapter, reports)


def _fold(previous: LowRank | None, blocks: Sequence[Factors]) -> tuple[F64, F64]:
    """``[A_g; c_1 A_1; ...]`` (R, in) and ``[B_g, B_1, ...]`` (out, R) in float64, in place."""
    parts = ([(previous[0], previous[1], 1.0)] if previous is not None else []) + list(blocks)
    rank = sum(a.shape[0] for a, _, _ in parts)
    a_cat = np.empty((rank, parts[0][0].shape[1]))  # (R, in)
    b_cat = np.empty((parts[0][1].shape[0], rank))  # (out, R)
    row = 0
    for a, b, coef in parts:
        rows = slice(row, row + a.shape[0])
        np.multiply(a, coef, out=a_cat[rows], dtype=np.float64)  # in float64, no copy
        b_cat[:, rows] = b
        row = rows.stop
    return a_cat, b_cat

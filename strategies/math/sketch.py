"""Recompression at the cap through Gram matrices and randomized subspace iteration.

When only the cap ``k`` of a stacked rank ``R`` is kept, the exact route (QR of both factors,
SVD of the R × R core: O((out + in) R² + R³)) computes ``R - k`` directions only to drop them.
This route needs the leading ``l = k + p`` only. It works on the R × R Gram matrices of the
factors of ``M = B A`` (B: (out, R), A: (R, in)):

    G_B = BᵀB,  G_A = AAᵀ                       two symmetric rank-R updates, (out + in) R² flops
                                                (syrk), against (out + in) R² · 4 + O(R³) for QR
    ‖M‖_F² = Σ_ij (G_B)_ij (G_A)_ij             exact: ‖BA‖² = tr(G_B G_A)
    Q = B X is orthonormal  ⟺  Xᵀ G_B X = I     X: (R, l) coefficients of a left subspace
    M Mᵀ (B X) = B (G_A G_B X)                   one step of subspace iteration costs O(R² l)

Halko, Martinsson & Tropp, "Finding Structure with Randomness: Probabilistic Algorithms for
Constructing Approximate Matrix Decompositions", SIAM Review 53(2), 2011: the range finder of
Alg. 4.1 (Y = M Ω, Ω Gaussian with ``p`` columns of oversampling) refined by randomized subspace
iteration (Alg. 4.4), here run in the Gram's coefficient space and stopped once the captured
energy settles; then the direct SVD of Alg. 5.1 on ``C = Qᵀ M``:

    Q = B X (re-orthonormalised in the true metric)    C = (QᵀB) A         (l, in)
    C Cᵀ = U S² Uᵀ      B' = Q U_k S_k^½      A' = S_k^-½ U_kᵀ C      (B'A' = Q U_k U_kᵀ Qᵀ M)

``B'A'`` is an orthogonal projection of ``M``, so its error is exactly
``‖M‖² - Σ_{j≤k} s_j²`` (Pythagoras), the same relative Frobenius error the exact route reports.

A Gram squares the condition number: ``tr(G_B G_A)`` carries a rounding error up to about
``u (out + in + R) ‖B‖_F² ‖A‖_F²``. Where the dropped energy is not well above that floor (a
nearly lossless cap, an ill-conditioned or cancelling stack) this route declines (``None``) and
the caller takes the exact QR route.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

F64 = NDArray[np.float64]
EPS = float(np.finfo(np.float64).eps)
RESOLVE = 100.0  # the dropped energy must exceed the Gram's rounding floor this many times
SETTLED = 1e-3  # stop iterating once the captured energy moves < this share of the dropped


@dataclass(frozen=True)
class Leading:
    """The leading directions of ``M = B A`` found through the Grams, and what they cover."""

    q: F64  # (out, l) orthonormal basis of the sketched range
    u: F64  # (l, l) left singular vectors of C = Qᵀ M, by descending value
    s: F64  # (l,) singular values of C, descending
    c: F64  # (l, in) C = Qᵀ M
    energy: float  # ‖M‖_F², exact up to ``floor`` (estimated where ``energy_sd`` > 0)
    floor: float  # the Gram's rounding floor on ``energy``
    energy_sd: float = 0.0  # standard error of an estimated ``energy`` (0: not estimated)


def gram_leading(
    a: F64,
    b: F64,
    *,
    rank: int,
    width: int,
    max_iters: int = 8,
    seed: int = 0,
) -> Leading | None:
    """Leading singular triplets of ``B @ A`` through Gram matrices and subspace iteration.

    Parameters
    ----------
    a, b
        The factors, A (R, in) and B (out, R), float64.
    rank
        ``k``: the directions that will be kept; the iteration stops once their energy settles.
    width
        ``l >= k``: how many directions to carry (the cap plus the oversampling ``p``).
    max_iters
        Most steps of subspace iteration (HMT Alg. 4.4).
    seed
        Seed of the Gaussian test matrix Ω (in, l): the same inputs give the same factors.

    Returns
    -------
    Leading or None
        ``Q`` (out, l') orthonormal, ``C = Qᵀ M`` (l', in) with its left singular vectors and
        values, ``‖BA‖_F²`` and the Gram's rounding floor on it; ``None`` when ``‖BA‖_F²`` is
        not resolved above that floor at all.
    """
    g_b = b.T @ b  # (R, R)
    g_a = a @ a.T  # (R, R)
    energy = float(np.einsum("ij,ij->", g_b, g_a))  # ‖BA‖_F² = tr(G_B G_A)
    scale = float(np.trace(g_b)) * float(np.trace(g_a))  # ‖B‖_F² ‖A‖_F²
    floor = EPS * (b.shape[0] + a.shape[1] + a.shape[0]) * scale
    if energy <= RESOLVE * floor:
        return None
    omega = np.random.default_rng(seed).standard_normal((a.shape[1], width))  # (in, l)
    x = subspace(g_a, g_b, a @ omega, rank=rank, energy=energy, max_iters=max_iters)
    del g_a, g_b
    q = _euclidean(b @ x)  # (out, l'): exactly orthonormal in the true metric, not the Gram's
    c = (q.T @ b) @ a  # (l', R) @ (R, in) -> (l', in) = Qᵀ M
    return finish(q, c, energy, floor)


def dense_leading(m: F64, *, rank: int, width: int, max_iters: int = 8, seed: int = 0) -> Leading:
    """:func:`gram_leading` for a dense ``M`` (out, in): the same subspace iteration on products
    with ``M`` itself; ``‖M‖_F²`` is exact (to float64 rounding)."""
    energy = float(np.einsum("ij,ij->", m, m))
    floor = EPS * m.shape[1] * energy  # rounding of the sum of squares
    y = m @ np.random.default_rng(seed).standard_normal((m.shape[1], width))  # (out, l)
    captured = 0.0
    for _ in range(max_iters):
        q = _euclidean(y)  # (out, l)
        z = _euclidean(m.T @ q)  # (in, l)
        y = m @ z
        ritz = np.linalg.svd(y, compute_uv=False) ** 2  # s² of M z: the energy z captures
        now = float(np.sum(ritz[:rank]))
        if now - captured <= SETTLED * max(energy - now, 0.0):
            break
        captured = now
    q = _euclidean(y)
    return finish(q, q.T @ m, energy, floor)


def subspace(
    g_a: F64, g_b: F64, x: F64, *, rank: int, energy: float, max_iters: int, unit: float = EPS
) -> F64:
    """Randomized subspace iteration in the Grams' coefficient space (HMT Alg. 4.4).

    ``x`` (R, l): the start, ``Y = M Ω = B x``. Returns ``x`` with ``B x`` spanning the leading
    left singular directions of ``M = B A``; stops once the top ``rank``'s captured energy
    settles. ``unit``: the Grams' unit roundoff (the Cholesky shift scales with it).
    """
    captured = 0.0
    for _ in range(max_iters):  # half steps, each orthonormalised: conditioning s, not s^2
        x, z, _ = _orthonormal(x, g_b, unit)  # Q = B x orthonormal; z = G_B x: Mᵀ Q = Aᵀ z
        z, x, ritz = _orthonormal(z, g_a, unit)  # x = G_A z: M (Aᵀ z) = B x; ritz: s² of Qᵀ M
        now = float(np.sum(ritz[::-1][:rank]))  # the energy the top k of Q capture
        if now - captured <= SETTLED * max(energy - now, 0.0):
            break
        captured = now
    return x


def finish(
    q: F64, c: F64, energy: float, floor: float, *, energy_sd: float = 0.0, gram: F64 | None = None
) -> Leading:
    """The SVD of ``C = Qᵀ M`` (l, in) through its (l, l) Gram ``C Cᵀ`` (HMT Alg. 5.1)."""
    lam, u = np.linalg.eigh(_sym(c @ c.T if gram is None else gram))  # ascending
    s = np.sqrt(np.clip(lam[::-1], 0.0, None))
    return Leading(q, u[:, ::-1], s, c, energy, floor, energy_sd)


def _orthonormal(y: F64, metric: F64, unit: float = EPS) -> tuple[F64, F64, F64]:
    """``(y T, G y T, λ)`` with ``(y T)ᵀ G (y T) ≈ I``: ``y``'s range orthonormal in metric G.

    Shifted Cholesky-QR (Fukaya, Kannan, Nakatsukasa, Yamamoto, Yanagisawa, "Shifted Cholesky
    QR for computing the QR factorization of ill-conditioned matrices", SIAM J. Sci. Comput.
    42(1), 2020): ``yᵀ G y + σ I = L Lᵀ``, ``T = L⁻ᵀ``, with ``σ`` at ``10 · l · u`` of the trace,
    so nearly dependent directions are damped instead of amplified, and it never fails. Enough
    inside the iteration; the final basis is made exactly orthonormal by :func:`_euclidean`.
    ``λ``: the eigenvalues of ``yᵀ G y``, ascending.
    """
    g_y = metric @ y  # (R, l)
    h = _sym(y.T @ g_y)  # (l, l)
    t = _shifted_cholesky_inverse(h, unit)  # (l, l) upper triangular, or (l, 0)
    ritz = np.linalg.eigvalsh(h).astype(np.float64, copy=False)
    return y @ t, g_y @ t, ritz


def _euclidean(y: F64) -> F64:
    """``y``'s range with orthonormal columns: shifted Cholesky-QR levels the columns, then
    plain Cholesky-QR makes them orthonormal (CholeskyQR2); where the levelled columns are still
    numerically dependent, an eigen-decomposition drops those directions (rank-revealing) and a
    Householder QR of the kept ones makes them orthonormal to float64 rounding (one pass of
    ``y V Λ^-1/2`` alone leaves an error that grows with the kept directions' conditioning)."""
    y = y @ _shifted_cholesky_inverse(_sym(y.T @ y))  # (n, l) levelled
    h = _sym(y.T @ y)  # (l, l), close to I unless y was rank deficient
    if h.size and float(np.linalg.eigvalsh(h)[0]) > 0.1:  # cond(h) < 10: Cholesky is exact
        basis: F64 = y @ np.linalg.inv(np.linalg.cholesky(h)).T
        return basis
    lam, v = np.linalg.eigh(h)
    if lam.size == 0 or lam[-1] <= 0:
        return y[:, :0]
    keep = lam > lam[-1] * EPS * 10 * y.shape[1]
    basis, _ = np.linalg.qr(y @ (v[:, keep] / np.sqrt(lam[keep])))  # (n, l')
    return basis


def _shifted_cholesky_inverse(h: F64, unit: float = EPS) -> F64:
    """``L⁻ᵀ`` for ``h + σ I = L Lᵀ``, ``σ = 10 · l · u · tr(h)``; (l, 0) when ``h`` is zero."""
    size = float(np.trace(h))
    if not size > 0:
        return np.zeros((h.shape[0], 0))
    low = np.linalg.cholesky(h + (unit * 10 * h.shape[0] * size) * np.eye(h.shape[0]))
    inverse: F64 = np.linalg.inv(low).T
    return inverse


def _sym(h: F64) -> F64:
    sym: F64 = (h + h.T) / 2
    return sym

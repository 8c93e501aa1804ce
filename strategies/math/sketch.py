"""Recompression at the cap through Gram matrices and randomized subspace iteration.

When only the cap ``k`` of a stacked rank ``R`` is kept, the exact route (QR of both factors,
SVD of the R × R core: O((out + in) R² + R³)) computes ``R - k`` directions only to drop them.
This route needs the leading ``l = k + p`` only. It works on the R × R Gram matrices of the
factors of ``M = B A`` (B: (out, R), A: (R, in)):

    G_B = BᵀB,  G_A = AAᵀ                       two symmetric rank-R updates, (out + in) R² flops
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
    energy: float  # ‖M‖_F², exact up to ``floor``
    floor: float  # the Gram's rounding floor on ``energy``


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
        ``None`` when ``‖BA‖_F²`` is not resolved above the Gram's rounding floor at all.
    """
    g_b = b.T @ b  # (R, R)
    g_a = a @ a.T  # (R, R)
    energy = float(np.einsum("ij,ij->", g_b, g_a))  # ‖BA‖_F² = tr(G_B G_A)
    scale = float(np.trace(g_b)) * float(np.trace(g_a))  # ‖B‖_F² ‖A‖_F²
    floor = EPS * (b.shape[0] + a.shape[1] + a.shape[0]) * scale
    if energy <= RESOLVE * floor:
        return None
    omega = np.random.default_rng(seed).standard_normal((a.shape[1], width))  # (in, l)
    x = _orthonormal(a @ omega, metric=g_b)  # (R, l): Y = M Ω = B x
    captured = 0.0
    for _ in range(max_iters):
        z = g_b @ x  # (R, l)
        w = g_a @ z  # (R, l): M Mᵀ (B x) = B w
        ritz = np.linalg.eigvalsh(_sym(z.T @ w))[::-1]  # s² of Qᵀ M for Q = B x
        now = float(np.sum(ritz[:rank]))
        x = _orthonormal(w, metric=g_b)
        if now - captured <= SETTLED * max(energy - now, 0.0):
            break
        captured = now
    del g_a, g_b
    q = _orthonormal(_orthonormal(b @ x))  # (out, l'): the true metric, twice (CholeskyQR2)
    c = (q.T @ b) @ a  # (l', R) @ (R, in) -> (l', in) = Qᵀ M
    lam, u = np.linalg.eigh(_sym(c @ c.T))  # ascending
    s = np.sqrt(np.clip(lam[::-1], 0.0, None))
    return Leading(q, u[:, ::-1], s, c, energy, floor)


def _orthonormal(y: F64, *, metric: F64 | None = None) -> F64:
    """Columns spanning ``y``'s range, orthonormal in ``⟨u, v⟩ = uᵀ G v`` (G: metric or I).

    Eigen-decomposition of the small l × l Gram (a rank-revealing Cholesky-QR): directions whose
    squared length falls below ``1e3 · l · u`` of the largest are dropped instead of amplified.
    In a metric, a Householder QR levels the columns first, so that only the metric's own
    conditioning (not the s² of a power step) counts against that threshold.
    """
    if metric is not None:  # power steps scale directions by s^2: first level them (Householder)
        y = np.linalg.qr(y)[0]  # (n, l)
    h = y.T @ (y if metric is None else metric @ y)  # (l, l)
    lam, v = np.linalg.eigh(_sym(h))
    if lam.size == 0 or lam[-1] <= 0:
        return y[:, :0]
    keep = lam > lam[-1] * EPS * 1e3 * y.shape[1]
    basis: F64 = y @ (v[:, keep] / np.sqrt(lam[keep]))  # (n, l')
    return basis


def _sym(h: F64) -> F64:
    sym: F64 = (h + h.T) / 2
    return sym

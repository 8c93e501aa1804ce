"""Recompression at the cap by products with the stack, the dropped energy estimated (Hutch++).

The Gram route (:mod:`strategies.math.sketch`, :mod:`strategies.math.gram32`) spends
``(out + in) R² / 2`` multiply-adds on the two R × R Grams only to know ``‖M‖_F²`` exactly. This
route never forms them: it touches the stack ``M = B diag(c) A`` (B: (out, R), A: (R, in)) only
through products with thin matrices, ``M X = B (c ⊙ (A X))`` and ``Mᵀ Y = Aᵀ (c ⊙ (Bᵀ Y))``, each
``(out + in) R l`` multiply-adds, also when the stack is wider than the module (R ≥ min(out, in)).

1. **Range finder** (Halko, Martinsson & Tropp, SIAM Review 53(2), 2011, Sec. 4) grown as a
   block Krylov space (Musco & Musco, NeurIPS 2015; :func:`block_krylov`): ``K_0 = orth(M Ω)``
   with ``Ω`` (in, l) Gaussian, ``l = k + p``, each step appending the part of
   ``M Mᵀ K_i`` orthogonal to the basis, until the leading k Ritz values' energy has settled
   (:func:`_settled`). After the first step, instead of a second step to extrapolate from, one
   pass of width k tests the leading Ritz vectors' residual (:func:`ritz_residual`): where it
   holds below ``RESIDUAL`` of the dropped energy the basis has converged (a stack dominated by
   the global adapter: one step); otherwise the residual, already a product with M and inside
   the next Krylov block's span, is that block (nothing is wasted) and the geometric rule
   decides from there. The passes run in float32 (BLAS at twice float64's rate), blocks of
   ``CHUNK`` stacked rows summed in float64.
2. **The kept factors** (HMT Alg. 5.1, Rayleigh-Ritz): ``C = Qᵀ M`` is the stack of the half
   steps ``(Mᵀ K_i)ᵀ`` (no pass of its own), its SVD through ``C Cᵀ``; ``B'A' = Q U_k U_kᵀ C``
   is the orthogonal projection of M on the leading Ritz directions, up to the float32 rounding
   of the products (~1e-6 relative; the route declines where that could matter, below).
3. **The energy outside Q, estimated**: Hutch++ (Meyer, Musco, Musco & Woodruff, "Hutch++:
   Optimal Stochastic Trace Estimation", SOSA 2021) deflates a trace estimate by a sketched
   basis and estimates only the rest; here the deflation is the Krylov basis Q itself (L ≥ 2l
   directions, power-iterated, a stronger deflation than Hutch++'s one-pass sketch), and the
   rest ``R = (I - QQᵀ) M`` is estimated by Hutchinson's estimator on ``s = PROBES`` fresh
   Gaussian probes ``G`` (in, s), their products in float64:

       T̂ = ‖R G‖_F² / s                       estimates T = ‖(I - QQᵀ) M‖_F²

   The truncation error reported is ``sqrt(Σ_{j>k} θ_j² + T̂)`` (the dropped Ritz values inside
   Q are exact) and ``‖M‖_F² = ‖C‖_F² + T̂``.

**The guarantee.** ``G`` is drawn independently of Q, so ``E[T̂] = T`` (unbiased), and with
``σ_i`` the singular values of ``R`` (rotation invariance: ``‖R g‖² = Σ_i σ_i² χ²₁``)

    Var T̂ = 2 Σ σ_i⁴ / s,      P(|T̂ - T| ≥ 2 sqrt(x Σσ_i⁴ / s) + 2 x σ_1² / s) ≤ 2 e^(-x)

(Laurent & Massart, Ann. Statist. 28(5), 2000, Lemma 1). In relative terms, with
``r_s = ‖R‖_F² / ‖R‖_2² ≥ 1`` (the remainder's stable rank) the standard deviation is
``≤ sqrt(2 / (s r_s)) T``, and ``|T̂ - T| ≤ (2 sqrt(x / (s r_s)) + 2 x / (s r_s)) T`` with
probability ``≥ 1 - 2 e^(-x)``. The remainder is what a power-iterated basis of L directions
leaves, so its spectrum tends to be flat (r_s of the order of its rank; on the benchmark's stacks
hundreds: a standard error of 0.3-0.4 % of the reported error at s = 32). Each result
carries the sample standard error of ``T̂`` from its own probes (``energy_sd``).

Where the dropped energy is below ``RESOLVE · U32`` of ``‖M‖_F²`` (6e-6: a relative error
below about 0.25 %), float32 rounding of the products could matter: the route declines
(``None``) and the caller takes a certified route.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from strategies.math.sketch import (
    Leading,
    _euclidean,
    _shifted_cholesky_inverse,
    finish,
)
from strategies.math.stacking import ModuleStack

F64 = NDArray[np.float64]
U32 = float(np.finfo(np.float32).eps) / 2  # float32's unit roundoff
CHUNK = 256  # stacked rows per block: bounds the float64 copies of a float32 stack
PROBES = 32  # s: the Gaussian probes of the energy outside the basis
RULE_PROBES = 16  # s': cruder probes (float32) for the stopping rule's energy outside
KRYLOV_OVERSAMPLE = 4  # p of the block size l = k + p (the Krylov basis grows by l a step)
SETTLED = 1e-2  # stop once the energy still to capture is below this share of the dropped
FIRST = 1e-3  # ... or the first step added less than this share (the start held the subspace)
RESIDUAL = 1e-3  # ... or, after one step, the Ritz vectors' residual is below this share
MAX_ITERS = 6  # most Krylov steps (each: one M and one Mᵀ pass)


def times(stack: ModuleStack, x: F64, *, dtype: type = np.float64) -> F64:
    """``M X`` (out, l) for ``X`` (in, l), ``CHUNK`` stacked rows at a time in ``dtype``, summed
    in float64; in float64 the small part (the global adapter) exact, in float32 rounded too."""
    small = stack.small if dtype == np.float64 else 0  # float32: the small part rounded too
    y = stack.b_small[:, :small] @ (stack.a_small[:small] @ x)  # (out, l)
    xd: NDArray[np.floating] = x.astype(dtype, copy=False)
    for start in range(small, stack.rank, CHUNK):
        rows = slice(start, min(start + CHUNK, stack.rank))
        t = stack.a[rows].astype(dtype, copy=False) @ xd  # (c, l)
        t *= stack.coef[rows, None].astype(dtype)
        y += stack.b[:, rows].astype(dtype, copy=False) @ t
    return y


def times_t(stack: ModuleStack, y: F64, *, dtype: type = np.float64) -> F64:
    """``Mᵀ Y`` (in, l) for ``Y`` (out, l), as :func:`times`."""
    small = stack.small if dtype == np.float64 else 0
    x = stack.a_small[:small].T @ (stack.b_small[:, :small].T @ y)  # (in, l)
    yd: NDArray[np.floating] = y.astype(dtype, copy=False)
    for start in range(small, stack.rank, CHUNK):
        rows = slice(start, min(start + CHUNK, stack.rank))
        t = stack.b[:, rows].astype(dtype, copy=False).T @ yd  # (c, l)
        t *= stack.coef[rows, None].astype(dtype)
        x += stack.a[rows].astype(dtype, copy=False).T @ t
    return x


def range_leading(
    stack: ModuleStack, *, rank: int, width: int, max_iters: int = MAX_ITERS, seed: int = 0
) -> Leading | None:
    """Leading singular triplets of the stack's ``M`` by products with it (module doc).

    Parameters
    ----------
    stack
        One module's stack, ``M = B diag(c) A``.
    rank
        ``k``: the directions that will be kept; the iteration stops once their energy settles.
    width
        ``l >= k``: how many directions to carry (the cap plus the oversampling ``p``).
    max_iters
        Most steps of subspace iteration.
    seed
        Seed of the test matrix and the probes: the same inputs give the same result.

    Returns
    -------
    Leading or None
        ``Q`` (out, L) orthonormal, ``C = Qᵀ M`` with its SVD, ``energy`` = ``‖C‖_F² + T̂``
        (estimated), ``energy_sd`` the standard error of ``T̂`` and ``floor`` the float32
        rounding floor; ``None`` when ``M`` is zero.
    """
    rng = np.random.default_rng(seed)
    in_dim = stack.a.shape[1]
    omega = _euclidean(rng.standard_normal((in_dim, width)))  # (in, l)
    rule = rng.standard_normal((in_dim, RULE_PROBES))  # (in, s'): the stopping rule's probes
    q, c, gram = block_krylov(stack, omega, rule, rank=rank, max_iters=max_iters)
    probes = times(stack, rng.standard_normal((in_dim, PROBES)))  # (out, s) = M G in float64
    outside, sd = hutchinson(probes, q)
    energy = float(np.trace(gram)) + outside
    if not energy > 0:
        return None
    floor = U32 * energy  # the products' float32 rounding, relative
    return finish(q, c, energy, floor, energy_sd=sd, gram=gram)


def block_krylov(
    stack: ModuleStack, omega: F64, rule: F64, *, rank: int, max_iters: int
) -> tuple[F64, F64, F64]:
    """An orthonormal basis ``Q`` (out, L) of the block Krylov space ``[M Ω, (M Mᵀ) M Ω, ...]``,
    ``C = Qᵀ M`` (L, in) and ``C Cᵀ`` (L, L), the products in float32 (blocks summed in float64).

    Block Lanczos without the tridiagonal form (Musco & Musco, "Randomized Block Krylov Methods
    for Stronger and Faster Approximate Singular Value Decomposition", NeurIPS 2015): each new
    block ``K_{i+1} = orth((I - QQᵀ) M orth(Mᵀ K_i))`` is made orthogonal to the basis so far,
    so ``C`` is the stack of the half steps ``(Mᵀ K_i)ᵀ`` and costs no pass of its own; the
    space converges like a Chebyshev polynomial, not a power, of the spectrum (a third of the
    steps of subspace iteration on slowly decaying spectra). Stops once the leading ``rank``
    Ritz values' energy has settled (:func:`_settled`; the energy outside the leading
    directions: the rest of the basis's Ritz values plus a rough Hutchinson estimate beyond the
    basis from the Gaussian ``rule`` (in, s'), float32, used for nothing else), after the first
    step on the Ritz vectors' residual (:func:`ritz_residual`: one pass of width ``rank``, which is
    the next block where the test fails), or once the space is exhausted.
    """
    fast = np.float32
    both = times(stack, np.hstack([omega, rule]), dtype=fast)  # (out, l + s') = M [Ω, G']
    y, probed = both[:, : omega.shape[1]], both[:, omega.shape[1] :]
    q = _euclidean(y)  # (out, L): K_0, then each block appended
    halves = times_t(stack, q, dtype=fast)  # (in, L) = Mᵀ Q = Cᵀ
    last = halves  # (in, b) = Mᵀ K_i of the newest block
    gram = halves.T @ halves  # (L, L) = C Cᵀ
    gains = [_top(gram, rank)]  # captured energy, then what each step added
    pending: F64 | None = None  # the residual block, already a product with M
    for _ in range(max_iters):
        if pending is None:
            y = times(stack, _levelled(last), dtype=fast)  # (out, l) = M Mᵀ K_i
            y -= q @ (q.T @ y)
        else:
            y, pending = pending, None
        y -= q @ (q.T @ y)  # twice is enough (Giraud, Langou & Rozložník 2005)
        block = _euclidean(y)  # K_{i+1} ⊥ the basis; fewer columns once the space runs out
        if block.shape[1] == 0:
            break
        last = times_t(stack, block, dtype=fast)  # (in, b) = Mᵀ K_{i+1}
        cross = halves.T @ last  # (L, b)
        gram = np.block([[gram, cross], [cross.T, last.T @ last]])
        q, halves = np.hstack([q, block]), np.hstack([halves, last])
        now = _top(gram, rank)
        gains.append(now - sum(gains))
        outside = probed - q @ (q.T @ probed)  # (out, s') = (I - QQᵀ) M G'
        beyond = float(np.einsum("ij,ij->", outside, outside)) / probed.shape[1]  # ≈ T
        dropped = float(np.trace(gram)) - now + beyond
        if _settled(gains, dropped=dropped):
            break
        if len(gains) == 2:  # one step: the Ritz vectors' residual decides
            pending, missing = ritz_residual(stack, q, halves, gram, rank=rank)
            if missing <= RESIDUAL * max(dropped, 0.0):
                break
    return q, halves.T, gram


def ritz_residual(
    stack: ModuleStack, q: F64, halves: F64, gram: F64, *, rank: int
) -> tuple[F64, float]:
    """The leading Ritz vectors' residual ``(I - QQᵀ) M V_k`` and its energy.

    With ``C = Qᵀ M = U Θ Vᵀ`` the right Ritz vectors ``V_k = Cᵀ U_k Θ_k⁻¹`` are orthonormal and
    ``M V_k = Q U_k Θ_k + (I - QQᵀ) M V_k``, so ``‖M V_k‖_F² = Σ_{j≤k} θ_j² + ‖residual‖_F²``,
    which is at most ``Σ_{j≤k} σ_j²`` (Ky Fan): the residual's energy is energy the leading Ritz
    values provably still miss, a lower bound on their distance from Eckart-Young's.

    Parameters
    ----------
    stack
        The module's stack ``M``.
    q, halves, gram
        The basis ``Q`` (out, L), ``Mᵀ Q`` (in, L) and ``C Cᵀ`` (L, L).
    rank
        ``k``: how many leading Ritz vectors.

    Returns
    -------
    tuple
        The residual (out, k), orthogonal to ``Q`` (the next block where the test fails), and
        its energy; one pass with ``M`` in float32.
    """
    lam, u = np.linalg.eigh(gram)  # ascending
    lam, u = lam[::-1][:rank], u[:, ::-1][:, :rank]
    keep = lam > 0
    right = halves @ (u[:, keep] / np.sqrt(lam[keep]))  # (in, k) = V_k
    image = times(stack, right, dtype=np.float32)  # (out, k) = M V_k
    image -= q @ (q.T @ image)
    image -= q @ (q.T @ image)  # twice is enough
    return image, float(np.einsum("ij,ij->", image, image))


def hutchinson(sketched: F64, q: F64) -> tuple[float, float]:
    """``T̂ = mean_j ‖(I - QQᵀ) M g_j‖²`` (module doc) and its sample standard error.

    ``sketched`` (out, s) = M G with Gaussian G drawn independently of ``q`` (out, L).
    """
    y = sketched - q @ (q.T @ sketched)  # (out, s) = R G
    y -= q @ (q.T @ y)  # twice is enough (Giraud, Langou & Rozložník 2005)
    samples = np.einsum("ij,ij->j", y, y)  # (s,) ‖R g_j‖², iid with mean ‖R‖_F²
    return float(samples.mean()), float(samples.std(ddof=1) / np.sqrt(samples.size))


def _settled(gains: list[float], *, dropped: float) -> bool:
    """Whether the energy still to gain, extrapolated from the last two steps' gains as a
    geometric series (``g r / (1 - r)``, ``r = g_i / g_{i-1}``), is below ``SETTLED`` of the
    energy outside the leading directions; after one step, whether it added less than ``FIRST``
    of that (the start already held the leading subspace)."""
    if len(gains) < 3:
        return len(gains) == 2 and gains[1] <= FIRST * max(dropped, 0.0)
    last, before = max(gains[-1], 0.0), gains[-2]
    if not before > 0:
        return last <= 0
    ratio = last / before
    return ratio < 1 and last * ratio / (1 - ratio) <= SETTLED * max(dropped, 0.0)


def _top(gram: F64, rank: int) -> float:
    """The energy of the leading ``rank`` singular values of C, from ``C Cᵀ``."""
    return float(np.sum(np.linalg.eigvalsh(gram)[::-1][:rank]))


def _levelled(y: F64) -> F64:
    """``y``'s range with nearly orthonormal columns (one shifted Cholesky-QR): enough inside
    the iteration; the final basis is made orthonormal by :func:`_euclidean`."""
    levelled: F64 = y @ _shifted_cholesky_inverse(y.T @ y)
    return levelled

"""The route at the cap on float32 Gram matrices, with a certified truncation error.

:mod:`strategies.math.sketch` needs ``‖M‖_F² = ⟨G_B, G_A⟩`` exactly, and the two R × R Grams
(``(out + in) R² / 2`` multiply-adds) are the route's main cost. Here the nodes' blocks of them
are formed by float32 BLAS (twice float64's speed) over blocks of ``CHUNK`` rows, each block
accumulated in float64; the rows and columns of the small part (the global adapter, the
collapsed starts) are formed in float64. Everything that decides what is returned stays exact:
the basis ``Q = orth(B X)`` is made orthonormal in float64 and ``C = Qᵀ M`` is formed in float64
from the stack itself, so ``B'A' = Q U_k U_kᵀ Qᵀ M`` is an orthogonal projection of ``M`` and
its error is ``‖M‖² - Σ_{j≤k} s_j²`` (Pythagoras). Only ``‖M‖²`` carries float32 rounding, and
that is bounded, not hoped for. With g = gamma_{CHUNK+2} = (CHUNK+2) u / (1 - (CHUNK+2) u) in
float32 and n the column norms (Higham, Accuracy and Stability of Numerical Algorithms, 2nd
ed., 2002, Sec. 3.1; a block's float32 sum, then its float64 accumulation):

    |fl(G) - G| ≤ g |X|ᵀ|X| ≤ g n nᵀ                                   entrywise
    |⟨Ĝ_B, Ĝ_A⟩ - ‖M‖²| ≤ η = g (n_Bᵀ|Ĝ_A| n_B + n_Aᵀ|Ĝ_B| n_A) + 3 g² (n_B·n_A)² + g' (n_B·n_A)²

with g' the float64 rounding of the R² sum, and n_B, n_A zero on the small part in the g terms
(its rows and columns are float64), so a dominant global costs no accuracy. The caller keeps
the result only when the dropped energy exceeds ``RESOLVE · η`` (100 η): the reported error
``sqrt(‖M‖² - Σ s_j²)`` is then within 0.5% of the returned factors' true error, guaranteed.
Otherwise it takes the float64 route (:func:`strategies.math.sketch.gram_leading`), and below
what that resolves, the exact QR route.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from strategies.math.sketch import EPS, RESOLVE, Leading, _euclidean, finish, subspace
from strategies.math.stacking import ModuleStack

F64 = NDArray[np.float64]
CHUNK = 1024  # rows summed in float32 before the float64 accumulation
U32 = float(np.finfo(np.float32).eps) / 2  # unit roundoff
GAMMA = (CHUNK + 2) * U32 / (1 - (CHUNK + 2) * U32)


def gram_b(stack: ModuleStack) -> F64:
    """``Bᵀ B`` (R, R): the node-node block in float32 over row blocks summed in float64, the
    rows and columns of the small part exact in float64."""
    b, small = stack.b, stack.small
    g = np.zeros((stack.rank, stack.rank))
    cross = np.zeros((small, stack.rank))  # (k_s, R) = B_sᵀ B in float64
    for start in range(0, b.shape[0], CHUNK):
        part = np.asarray(b[start : start + CHUNK], dtype=np.float32)  # (c, R)
        g += part.T @ part
        if small:
            cross += stack.b_small[start : start + CHUNK].T @ b[start : start + CHUNK]
    return _exact_small(g, cross, stack.b_small.T @ stack.b_small)


def gram_a(stack: ModuleStack) -> F64:
    """``A Aᵀ`` (R, R) of the unscaled A, as :func:`gram_b` forms ``Bᵀ B``."""
    a, small = stack.a, stack.small
    g = np.zeros((stack.rank, stack.rank))
    cross = np.zeros((small, stack.rank))  # (k_s, R) = A_s Aᵀ in float64
    for start in range(0, a.shape[1], CHUNK):
        part = np.asarray(a[:, start : start + CHUNK], dtype=np.float32)  # (R, c)
        g += part @ part.T
        if small:
            cross += stack.a_small[:, start : start + CHUNK] @ a[:, start : start + CHUNK].T
    return _exact_small(g, cross, stack.a_small @ stack.a_small.T)


def _exact_small(g: F64, cross: F64, corner: F64) -> F64:
    """``g`` with the small part's rows and columns replaced by the float64 ``cross`` and its
    (k_s, k_s) ``corner`` (the float32 products there came from the small part rounded)."""
    small = cross.shape[0]
    g[:small] = cross
    g[:, :small] = cross.T
    g[:small, :small] = corner
    return g


def energy_bound(g_a: F64, g_b: F64, *, n_a: F64, n_b: F64, small: int) -> float:
    """``η``: the bound on ``|⟨Ĝ_B, Ĝ_A⟩ - ‖BA‖²|`` of the module doc, from the column norms;
    the first ``small`` rows and columns of both Grams are exact (float64)."""
    nodes_b, nodes_a = n_b.copy(), n_a.copy()
    nodes_b[:small] = 0.0  # no float32 rounding in the small part's rows and columns
    nodes_a[:small] = 0.0
    first = float(nodes_b @ (np.abs(g_a) @ nodes_b)) + float(nodes_a @ (np.abs(g_b) @ nodes_a))
    size = g_a.shape[0] ** 2 + 3  # the R² sum and the two coefficient products, in float64
    gamma64 = size * EPS / 2 / (1 - size * EPS / 2)
    second = 3 * GAMMA**2 * float(nodes_b @ nodes_a) ** 2
    third = gamma64 * (1 + GAMMA) ** 2 * float(n_b @ n_a) ** 2
    return float(GAMMA * first + second + third)


def stack_leading(
    stack: ModuleStack, *, rank: int, width: int, max_iters: int = 8, seed: int = 0
) -> Leading | None:
    """Leading singular triplets of the stack's ``M``, as
    :func:`strategies.math.sketch.gram_leading` finds them, on float32 Grams.

    Returns
    -------
    Leading or None
        ``floor`` is ``η`` (module doc), the bound on the error of ``energy``; ``None`` when
        ``energy`` is not above ``RESOLVE · η`` at all.
    """
    coef = stack.coef  # (R,)
    g_b = gram_b(stack)  # (R, R)
    g_a = gram_a(stack)  # (R, R) of the unscaled A
    n_b = np.sqrt(np.diag(g_b) / (1 - GAMMA))  # ‖b_p‖, rounded up
    n_a = np.abs(coef) * np.sqrt(np.diag(g_a) / (1 - GAMMA))
    g_a *= coef[:, None]
    g_a *= coef[None, :]  # diag(c) A Aᵀ diag(c)
    energy = float(np.einsum("ij,ij->", g_b, g_a))  # ‖M‖² up to η
    floor = energy_bound(g_a, g_b, n_a=n_a, n_b=n_b, small=stack.small)
    if energy <= RESOLVE * floor:
        return None
    omega = np.random.default_rng(seed).standard_normal((stack.a.shape[1], width))
    x0 = coef[:, None] * (stack.a @ omega.astype(stack.a.dtype))  # (R, l) = diag(c) A Ω
    x = subspace(g_a, g_b, x0, rank=rank, energy=energy, max_iters=max_iters, unit=U32)
    del g_a, g_b
    q = _euclidean(np.asarray(stack.b @ x.astype(stack.b.dtype), dtype=np.float64))  # (out, l')
    return finish(q, project(stack, q), energy, floor)


def project(stack: ModuleStack, q: F64) -> F64:
    """``C = Qᵀ M`` (l, in) in float64 from the exact stack, a block of rows at a time."""
    w = np.zeros((q.shape[1], stack.rank))  # (l, R) = Qᵀ B
    for start in range(0, stack.b.shape[0], CHUNK):
        rows = slice(start, start + CHUNK)
        w += q[rows].T @ stack.b[rows].astype(np.float64)
    small = stack.small
    w[:, :small] = q.T @ stack.b_small  # the exact small part
    c = w[:, :small] @ stack.a_small  # (l, in)
    w_nodes = w[:, small:] * stack.coef[small:]  # (l, R_n)
    nodes = stack.a[small:]
    for start in range(0, nodes.shape[1], CHUNK):
        cols = slice(start, start + CHUNK)
        c[:, cols] += w_nodes @ nodes[:, cols].astype(np.float64)
    return c

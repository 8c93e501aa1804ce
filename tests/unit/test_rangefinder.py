"""The range route at the cap (strategies/math/rangefinder.py): within 1% of Eckart-Young
against float64 dense SVDs, its estimated error unbiased and inside its stated bounds over many
seeds, and the routes chosen as documented (estimated at tol = 0, certified with a tolerance)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from strategies.flower.flora import FLoRA
from strategies.flower.replies import ClientUpdate
from strategies.math.lowrank import OVERSAMPLE, RANGE_FROM, estimate_stack
from strategies.math.rangefinder import (
    KRYLOV_OVERSAMPLE,
    PROBES,
    hutchinson,
    range_leading,
    ritz_residual,
    times,
    times_t,
)
from strategies.math.stacking import ModuleStack, module_stack
from strategies.math.streaming import accumulate_changes, accumulate_updates
from strategies.options import AggregationOptions, Federation


def _stack(rng, *, nodes, rank, out_dim, in_dim, decay, global_rank=0, global_weight=1.0):
    """float32 nodes (as sent) whose product's spectrum falls by ``decay`` decades across the
    stacked rows, on an optional float64 global adapter."""
    scale = np.logspace(0, -decay, nodes * rank).reshape(nodes, rank)
    blocks = [((rng.normal(size=(rank, in_dim)) * scale[i][:, None]).astype(np.float32),
               rng.normal(size=(out_dim, rank)).astype(np.float32), float(rng.uniform(0.2, 2)))
              for i in range(nodes)]  # fmt: skip
    previous = None
    if global_rank:
        previous = (rng.normal(size=(global_rank, in_dim)) * global_weight,
                    rng.normal(size=(out_dim, global_rank)))  # fmt: skip
    return module_stack(previous, blocks)


def _truth(stack: ModuleStack, out, k: int) -> tuple[float, float, float]:
    """(optimal, actual) absolute Frobenius errors at rank k and ‖M‖_F, in float64."""
    a, b = stack.dense_factors()
    dense = b @ a
    s = np.linalg.svd(dense, compute_uv=False)
    optimal = float(np.sqrt(np.sum(s[k:] ** 2)))  # Eckart-Young
    return optimal, float(np.linalg.norm(dense - out.b @ out.a)), float(np.linalg.norm(dense))


@settings(max_examples=30, deadline=None)
@given(
    k=st.integers(1, 8),
    nodes=st.integers(24, 48),
    rank=st.integers(6, 10),
    extra=st.integers(0, 40),
    decay=st.floats(0.0, 8.0),
    global_rank=st.sampled_from([0, 4, 12]),
    seed=st.integers(0, 10_000),
)
def test_range_route_within_one_percent_of_eckart_young(
    k, nodes, rank, extra, decay, global_rank, seed
) -> None:
    rng = np.random.default_rng(seed)
    dim = 4 * (k + OVERSAMPLE) + extra  # the smallest module the route takes, and up
    stack = _stack(rng, nodes=nodes, rank=rank, out_dim=dim, in_dim=dim + 7, decay=decay,
                   global_rank=global_rank)  # fmt: skip
    assume(stack.rank >= RANGE_FROM * (k + OVERSAMPLE))  # where the route applies
    out = estimate_stack(stack, max_rank=k, seed=seed)
    assert out is not None and out.method == "range" and out.rank == k
    optimal, actual, norm = _truth(stack, out, k)
    assert actual <= 1.01 * optimal + 1e-9 * norm  # the bar, flat spectra included
    assert abs(out.error - actual) <= 6 * out.error_sd + 1e-6 * norm  # the estimate


@pytest.mark.parametrize("spectrum", ["flat", "1/j", "1/sqrt(j)"])
def test_slowly_decaying_spectra_at_scale_within_one_percent(spectrum: str) -> None:
    # singular values that barely fall (the hardest case for a range finder's Frobenius error)
    rng = np.random.default_rng(3)
    size, rank_total, k = 600, 480, 32
    j = np.arange(1, rank_total + 1)
    s = {"flat": np.ones(rank_total), "1/j": 1 / j, "1/sqrt(j)": 1 / np.sqrt(j)}[spectrum]
    u, _ = np.linalg.qr(rng.normal(size=(size, rank_total)))
    v, _ = np.linalg.qr(rng.normal(size=(size + 20, rank_total)))
    a = (s[:, None] * v.T).astype(np.float32)  # (R, in)
    stack = module_stack(None, [(a, u.astype(np.float32), 1.0)])
    out = estimate_stack(stack, max_rank=k)
    assert out is not None and out.method == "range"
    optimal, actual, _ = _truth(stack, out, k)
    assert actual <= 1.01 * optimal
    assert out.error == pytest.approx(actual, rel=0.03)


def test_a_stack_wider_than_the_module_stays_factored_within_one_percent() -> None:
    # R = 12 + 40 * 8 = 332 >= 130: no dense product, no R x R Gram
    rng = np.random.default_rng(5)
    stack = _stack(rng, nodes=40, rank=8, out_dim=130, in_dim=140, decay=1.0, global_rank=12)
    out = estimate_stack(stack, max_rank=8)
    assert out is not None and out.method == "range" and out.stacked_rank == 332
    optimal, actual, _ = _truth(stack, out, 8)
    assert actual <= 1.01 * optimal


def test_products_with_the_stack_match_the_float64_product() -> None:
    rng = np.random.default_rng(6)
    stack = _stack(rng, nodes=30, rank=4, out_dim=90, in_dim=80, decay=2.0, global_rank=6)
    a, b = stack.dense_factors()
    x, y = rng.normal(size=(80, 5)), rng.normal(size=(90, 3))
    np.testing.assert_allclose(times(stack, x), b @ (a @ x), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(times_t(stack, y), a.T @ (b.T @ y), rtol=1e-12, atol=1e-12)
    fast = times(stack, x, dtype=np.float32)
    assert np.linalg.norm(fast - b @ (a @ x)) <= 1e-5 * np.linalg.norm(b @ (a @ x))


def _remainder(rng, sigma: np.ndarray, out_dim: int, in_dim: int, basis: int):
    """A basis Q (out, basis) and M whose part outside Q has singular values ``sigma``."""
    full, _ = np.linalg.qr(rng.normal(size=(out_dim, basis + sigma.size)))
    q, u = full[:, :basis], full[:, basis:]
    v, _ = np.linalg.qr(rng.normal(size=(in_dim, sigma.size)))
    inside = q @ rng.normal(size=(basis, in_dim))  # energy inside Q, which T excludes
    return q, inside + (u * sigma) @ v.T


@pytest.mark.parametrize(
    "sigma",
    [np.ones(150), 1 / np.arange(1, 151), np.r_[10.0, np.ones(60) * 0.1]],
    ids=["flat", "1/j", "one strong direction"],
)
def test_hutchinson_estimate_is_unbiased_and_within_its_tail_bound(sigma: np.ndarray) -> None:
    # the module doc's guarantee, checked empirically over 400 independent probe draws:
    # E T̂ = T; P(|T̂ - T| >= 2 sqrt(x Σσ⁴/s) + 2 x σ_1²/s) <= 2 e^-x (Laurent-Massart)
    rng = np.random.default_rng(7)
    q, m = _remainder(rng, sigma, out_dim=300, in_dim=260, basis=40)
    t = float(np.sum(sigma**2))
    draws = 400
    estimates, errors = np.empty(draws), np.empty(draws)
    for i in range(draws):
        probes = np.random.default_rng(1000 + i).standard_normal((260, PROBES))
        estimates[i], errors[i] = hutchinson(m @ probes, q)
    sd = math.sqrt(2 * np.sum(sigma**4) / PROBES)  # the exact standard deviation
    assert abs(estimates.mean() - t) <= 4 * sd / math.sqrt(draws)  # unbiased
    assert estimates.std() == pytest.approx(sd, rel=0.2)
    for x in (1.0, 3.0):
        band = 2 * math.sqrt(x * np.sum(sigma**4) / PROBES) + 2 * x * sigma.max() ** 2 / PROBES
        outside = np.mean(np.abs(estimates - t) >= band)
        assert outside <= 2 * math.exp(-x) + 0.03
    # the standard error each result reports covers the truth like a standard error
    assert np.mean(np.abs(estimates - t) <= 3 * errors) >= 0.9


def test_reported_error_is_honest_over_seeds_end_to_end() -> None:
    # one stack, 60 seeds of the whole route: the reported error² is unbiased for the true
    # error² of the factors returned, within the standard error it reports
    rng = np.random.default_rng(8)
    stack = _stack(rng, nodes=40, rank=6, out_dim=140, in_dim=150, decay=1.5, global_rank=8)
    a, b = stack.dense_factors()
    dense = b @ a
    z = []
    for seed in range(60):
        out = estimate_stack(stack, max_rank=8, seed=seed)
        assert out is not None and out.method == "range"
        actual2 = float(np.linalg.norm(dense - out.b @ out.a) ** 2)
        z.append((out.error**2 - actual2) / out.dropped_sd)
    z_arr = np.array(z)
    assert abs(z_arr.mean()) <= 0.5  # unbiased: a mean of 60 standardised errors
    assert np.mean(np.abs(z_arr) <= 3) >= 0.9


def test_route_choice_estimated_without_a_tolerance_certified_with_one() -> None:
    rng = np.random.default_rng(9)
    updates = [{"m": (rng.normal(size=(4, 210)).astype(np.float32),
                      rng.normal(size=(200, 4)).astype(np.float32), 2.0)}
               for _ in range(45)]  # fmt: skip
    weights = [1 / 45] * 45
    fast = accumulate_updates({}, updates, weights, max_rank=4)
    assert fast.reports["m"].method == "range" and fast.estimated
    assert 0 < fast.relative_error_sd < 0.05 * fast.relative_error
    exact = accumulate_updates({}, updates, weights, max_rank=4, tol=1e-9)
    assert exact.reports["m"].method == "gram32" and not exact.estimated
    assert exact.relative_error_sd == 0.0
    # the same truncation: the estimate is close to the certified error
    close = pytest.approx(exact.relative_error, abs=4 * fast.relative_error_sd)
    assert fast.relative_error == close


def test_route_is_deterministic_and_a_nearly_lossless_cap_leaves_it() -> None:
    rng = np.random.default_rng(10)
    stack = _stack(rng, nodes=35, rank=6, out_dim=120, in_dim=130, decay=2.0)
    one, two = estimate_stack(stack, max_rank=8), estimate_stack(stack, max_rank=8)
    assert one is not None and two is not None
    np.testing.assert_array_equal(one.a, two.a)
    assert one.error == two.error
    # rank 10 spread over a stack of 120: nothing to drop but rounding, which float32
    # products cannot resolve; the streamed route falls back to the exact one on float64
    a0, b0 = rng.normal(size=(10, 130)), rng.normal(size=(120, 10))
    mix = rng.normal(size=(10, 120))
    a, b = (mix.T @ a0).astype(np.float32), (b0 @ np.linalg.pinv(mix.T)).astype(np.float32)
    assert estimate_stack(module_stack(None, [(a, b, 1.0)]), max_rank=16) is None
    result = accumulate_updates({}, [{"m": (a, b, 1.0)}], [1.0], max_rank=16)
    assert result.reports["m"].method == "qr" and result.reports["m"].rank == 10


def test_range_leading_basis_is_orthonormal_and_its_c_is_q_transpose_m() -> None:
    rng = np.random.default_rng(11)
    stack = _stack(rng, nodes=25, rank=6, out_dim=130, in_dim=120, decay=1.0, global_rank=5)
    lead = range_leading(stack, rank=6, width=14)
    assert lead is not None
    a, b = stack.dense_factors()
    np.testing.assert_allclose(lead.q.T @ lead.q, np.eye(lead.q.shape[1]), atol=1e-10)
    np.testing.assert_allclose(lead.c, lead.q.T @ (b @ a), atol=1e-5 * np.linalg.norm(b @ a))


def test_continuing_round_at_the_cap_reports_the_estimate_and_its_standard_error() -> None:
    # FLoRA on 50 continuing nodes, 260 x 250 modules, cap 8: the range route runs on the
    # float32-rounded movement stack; the round's report carries the estimate's standard error
    rng = np.random.default_rng(12)
    modules = {"q": (260, 250)}
    global_adapter = {"q": (rng.normal(size=(8, 250)), rng.normal(size=(260, 8)))}
    updates = []
    for node in range(50):
        a0, b0 = global_adapter["q"][0][:4], global_adapter["q"][1][:, :4] / 2.0
        a = (a0 + rng.normal(size=a0.shape) * 0.3).astype(np.float32)
        b = (b0 + rng.normal(size=b0.shape) * 0.3).astype(np.float32)
        factors = {"q": (a, b, 2.0)}
        updates.append(ClientUpdate(node, f"n{node}", factors, 10, 4, {}, 0))
    strategy = FLoRA(federation=Federation(min_nodes=1),
                     options=AggregationOptions(max_global_rank=8), modules=modules)  # fmt: skip
    strategy.aggregate(1, updates, global_adapter)
    row = strategy.report(1).to_json()
    assert 0 < row["recompress_error_sd"] < 0.1 * row["recompress_error"]
    reference = accumulate_changes(
        global_adapter, [u.factors for u in updates], [1 / 50] * 50, max_rank=8, tol=1e-9
    )  # certified
    assert reference.reports["q"].rank == 8 and not reference.estimated
    assert row["recompress_error"] == pytest.approx(
        reference.relative_error, abs=5 * row["recompress_error_sd"]
    )


def test_a_stack_dominated_by_the_global_stops_after_one_step() -> None:
    # the global adapter's 12 strong directions hold nearly all the energy: one Krylov step
    # holds them, and the Ritz vectors' residual (one pass of width k) says so; before the
    # residual test a second step of width k + p ran to confirm it (three blocks)
    rng = np.random.default_rng(13)
    stack = _stack(rng, nodes=40, rank=6, out_dim=200, in_dim=210, decay=0.0, global_rank=12,
                   global_weight=30.0)  # fmt: skip
    width = 12 + KRYLOV_OVERSAMPLE
    for seed in range(10):  # a rough total from the first pass once fell below the captured
        lead = range_leading(stack, rank=12, width=width, seed=seed)
        assert lead is not None and lead.q.shape[1] == 2 * width
    out = estimate_stack(stack, max_rank=12)
    assert out is not None
    optimal, actual, _ = _truth(stack, out, 12)
    assert actual <= 1.01 * optimal


def _ritz_error(stack: ModuleStack, lead, k: int) -> tuple[float, float]:
    """(optimal, actual) errors of the Rayleigh-Ritz factors ``Q U_k U_kᵀ C`` of ``lead``."""
    a, b = stack.dense_factors()
    dense = b @ a
    s = np.linalg.svd(dense, compute_uv=False)
    kept = (lead.q @ lead.u[:, :k]) @ (lead.u[:, :k].T @ lead.c)
    return float(np.sqrt(np.sum(s[k:] ** 2))), float(np.linalg.norm(dense - kept))


def _spectrum_stack(rng, sigma: np.ndarray, *, out_dim: int, in_dim: int) -> ModuleStack:
    u, _ = np.linalg.qr(rng.normal(size=(out_dim, sigma.size)))
    v, _ = np.linalg.qr(rng.normal(size=(in_dim, sigma.size)))
    return module_stack(None, [((sigma[:, None] * v.T).astype(np.float32),
                                u.astype(np.float32), 1.0)])  # fmt: skip


_J = np.arange(1, 481)


@pytest.mark.parametrize("name", ["1/j", "1/sqrt(j)", "exp(-j/100)", "random nodes (FlexLoRA)"])
def test_where_one_step_is_not_enough_the_residual_test_goes_on(name: str) -> None:
    # spectra on which the Ritz factors after one Krylov step miss Eckart-Young by 1.2-3.3 %,
    # their residual after that step 0.6-2.5 % of the dropped energy (the random nodes as on
    # the benchmark's FlexLoRA stack: 0.64 %, 1.36 %): a rule that stopped there (a residual
    # threshold above ~0.6 %, or none) fails this test; the route must go on and land within 1 %
    rng = np.random.default_rng(14)
    if name == "random nodes (FlexLoRA)":  # a flat random stack of 40 rank-8 nodes, k = 16
        k, stack = 16, module_stack(None, [(rng.standard_normal((8, 1200)).astype(np.float32),
                                            rng.standard_normal((1200, 8)).astype(np.float32),
                                            1.0) for _ in range(40)])  # fmt: skip
    else:
        sigma = {"1/j": 1 / _J, "1/sqrt(j)": 1 / np.sqrt(_J), "exp(-j/100)": np.exp(-_J / 100)}
        k, stack = 32, _spectrum_stack(rng, sigma[name], out_dim=600, in_dim=620)
    width = k + KRYLOV_OVERSAMPLE
    one = range_leading(stack, rank=k, width=width, max_iters=1)
    assert one is not None and one.q.shape[1] == 2 * width  # one step
    optimal, actual = _ritz_error(stack, one, k)
    assert actual > 1.01 * optimal  # one step is not enough here
    lead = range_leading(stack, rank=k, width=width)
    assert lead is not None and lead.q.shape[1] > 2 * width  # the rule went on
    out = estimate_stack(stack, max_rank=k)
    assert out is not None and out.method == "range"
    optimal, actual, _ = _truth(stack, out, k)
    assert actual <= 1.01 * optimal


def test_ritz_residual_is_the_energy_the_ritz_values_still_miss() -> None:
    # ‖M V_k‖² = Σ θ_j² + ‖residual‖² <= Σ_{j<=k} σ_j² (Ky Fan), the residual ⊥ Q
    rng = np.random.default_rng(15)
    stack = _stack(rng, nodes=30, rank=6, out_dim=150, in_dim=160, decay=1.0, global_rank=4)
    a, b = stack.dense_factors()
    dense = b @ a
    q, _ = np.linalg.qr(dense @ rng.normal(size=(160, 20)))  # (out, 20): a one-pass basis
    halves = dense.T @ q  # (in, 20) = Mᵀ Q
    gram = halves.T @ halves
    residual, missing = ritz_residual(stack, q, halves, gram, rank=8)
    theta2 = np.sort(np.linalg.eigvalsh(gram))[::-1][:8]
    lam, u = np.linalg.eigh(gram)
    right = halves @ (u[:, ::-1][:, :8] / np.sqrt(lam[::-1][:8]))  # V_k, float64
    np.testing.assert_allclose(right.T @ right, np.eye(8), atol=1e-8)
    image = dense @ right
    assert missing == pytest.approx(np.sum(image**2) - np.sum(theta2), rel=1e-4)
    assert np.linalg.norm(q.T @ residual) <= 1e-9 * np.linalg.norm(residual)
    sigma2 = np.linalg.svd(dense, compute_uv=False)[:8] ** 2
    assert 0 < missing <= np.sum(sigma2) - np.sum(theta2)

"""Recompression: exact below the cap, Eckart-Young error (within 1% on the Gram route) at it."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from strategies.math.flora import stack
from strategies.math.lowrank import (
    OVERSAMPLE,
    _gram_recompress,
    accumulate,
    choose_rank,
    recompress,
)
from strategies.math.streaming import accumulate_updates


def _pair(rng: np.random.Generator, r: int, in_dim: int, out_dim: int):
    return rng.normal(size=(r, in_dim)), rng.normal(size=(out_dim, r))


@settings(max_examples=40, deadline=None)
@given(
    r=st.integers(1, 12),
    in_dim=st.integers(1, 20),
    out_dim=st.integers(1, 20),
    seed=st.integers(0, 999),
)
def test_exact_reconstruction_when_cap_reaches_rank(r, in_dim, out_dim, seed) -> None:
    a, b = _pair(np.random.default_rng(seed), r, in_dim, out_dim)
    dense = b @ a
    out = recompress(a, b, max_rank=r)
    assert out.rank == min(r, in_dim, out_dim)  # the true rank of a generic product
    assert out.a.shape == (out.rank, in_dim) and out.b.shape == (out_dim, out.rank)
    np.testing.assert_allclose(out.b @ out.a, dense, rtol=1e-9, atol=1e-9 * np.abs(dense).max())
    assert out.relative_error <= 1e-12


def test_truncation_error_is_eckart_young_of_the_dense_product() -> None:
    rng = np.random.default_rng(3)
    a, b = _pair(rng, 12, 30, 25)
    dense = b @ a
    s_ref = np.linalg.svd(dense, compute_uv=False)
    out = recompress(a, b, max_rank=5)
    assert out.rank == 5
    expected = np.sqrt(np.sum(s_ref[5:] ** 2)) / np.sqrt(np.sum(s_ref**2))
    assert out.relative_error == pytest.approx(expected, rel=1e-10)
    actual = np.linalg.norm(dense - out.b @ out.a) / np.linalg.norm(dense)
    assert actual == pytest.approx(expected, rel=1e-8)
    np.testing.assert_allclose(out.singular_values[:12], s_ref[:12], rtol=1e-10)


def test_factors_are_balanced() -> None:
    a, b = _pair(np.random.default_rng(4), 6, 10, 8)
    out = recompress(a, b, max_rank=None)
    np.testing.assert_allclose(
        np.linalg.norm(out.a, axis=1), np.linalg.norm(out.b, axis=0), rtol=1e-10
    )


def test_rank_deficient_stack_drops_zero_directions() -> None:
    rng = np.random.default_rng(5)
    a, b = _pair(rng, 3, 10, 10)
    a2 = np.concatenate([a, a], axis=0)  # rank stays 3
    b2 = np.concatenate([b, b], axis=1)
    out = recompress(a2, b2, max_rank=None)
    assert out.rank == 3
    np.testing.assert_allclose(out.b @ out.a, 2 * b @ a, atol=1e-10)


def test_tolerance_keeps_just_enough() -> None:
    s = np.array([4.0, 3.0, 0.0 + 1e-3])
    # keeping 2 leaves error 1e-3 / 5.0000001 = 2e-4
    assert choose_rank(s, max_rank=None, tol=1e-3) == 2
    assert choose_rank(s, max_rank=None, tol=1e-5) == 3
    assert choose_rank(s, max_rank=1, tol=1e-5) == 1
    assert choose_rank(np.zeros(3), max_rank=None) == 0


def test_empty_and_zero_updates() -> None:
    out = recompress(np.zeros((0, 4)), np.zeros((3, 0)), max_rank=8)
    assert out.rank == 0 and out.a.shape == (0, 4) and out.b.shape == (3, 0)
    out = recompress(np.zeros((2, 4)), np.zeros((3, 2)), max_rank=8)
    assert out.rank == 0 and out.relative_error == 0.0


@pytest.mark.parametrize(
    ("kwargs", "field"), [({"max_rank": -1}, "max_rank"), ({"max_rank": 2, "tol": 1.5}, "tol")]
)
def test_bad_settings_name_the_field(kwargs, field) -> None:
    with pytest.raises(ValueError, match=f"`{field}`"):
        recompress(np.ones((1, 2)), np.ones((2, 1)), **kwargs)


def test_accumulate_adds_rounds_exactly_and_keeps_untouched_modules() -> None:
    rng = np.random.default_rng(6)
    a1, b1 = _pair(rng, 4, 16, 12)
    a2, b2 = _pair(rng, 6, 16, 12)
    w1, w2 = _pair(rng, 2, 5, 5)
    r1 = accumulate({"other": (w1, w2)}, {"m": (a1, b1, 0.5)}, max_rank=32)
    r2 = accumulate(r1.adapter, {"m": (a2, b2, 2.0)}, max_rank=32)
    a_g, b_g = r2.adapter["m"]
    np.testing.assert_allclose(b_g @ a_g, 0.5 * b1 @ a1 + 2.0 * b2 @ a2, rtol=1e-9, atol=1e-9)
    assert r2.adapter["other"][0] is w1
    assert r2.max_rank == 10 and r2.relative_error < 1e-12


def test_accumulate_reports_truncation_over_all_modules() -> None:
    rng = np.random.default_rng(7)
    a, b = _pair(rng, 8, 12, 12)
    res = accumulate({}, {"m": (a, b, 1.0), "n": (a, b, 1.0)}, max_rank=4)
    dense = b @ a
    s = np.linalg.svd(dense, compute_uv=False)
    assert res.relative_error == pytest.approx(np.sqrt(np.sum(s[4:] ** 2) / np.sum(s**2)), rel=1e-9)


# --- at the cap: Gram matrices + randomized subspace iteration (issue 14) ---------------------


def _spectral_stack(rng, *, rank, out_dim, in_dim, decay):
    """B (out, R), A (R, in) whose product's spectrum falls by ``decay`` across the stack."""
    a = rng.normal(size=(rank, in_dim)) * np.logspace(0, -decay, rank)[:, None]
    return a, rng.normal(size=(out_dim, rank))


def _optimal_and_actual(a, b, out, k):
    dense = b @ a  # float64 reference
    s = np.linalg.svd(dense, compute_uv=False)
    optimal = np.sqrt(np.sum(s[k:] ** 2) / np.sum(s**2))  # Eckart-Young
    actual = np.linalg.norm(dense - out.b @ out.a) / np.linalg.norm(dense)
    return optimal, actual


@pytest.mark.parametrize("decay", [0.0, 1.0, 3.0, 6.0, 12.0])
def test_at_the_cap_gram_route_is_within_one_percent_of_eckart_young(decay: float) -> None:
    rng = np.random.default_rng(11)
    a, b = _spectral_stack(rng, rank=240, out_dim=300, in_dim=280, decay=decay)
    out = recompress(a, b, max_rank=24)
    assert out.method == "gram" and out.rank == 24
    optimal, actual = _optimal_and_actual(a, b, out, 24)
    assert actual <= 1.01 * optimal
    assert out.relative_error == pytest.approx(actual, rel=1e-6)  # reported exactly
    assert out.norm == pytest.approx(np.linalg.norm(b @ a), rel=1e-10)
    np.testing.assert_allclose(  # balanced, like the QR route's factors
        np.linalg.norm(out.a, axis=1), np.linalg.norm(out.b, axis=0), rtol=1e-8
    )


def test_at_the_cap_ill_conditioned_factors_keep_the_optimum() -> None:
    # B's columns span 7 orders of magnitude: its Gram's condition number is ~1e14
    rng = np.random.default_rng(12)
    b = rng.normal(size=(300, 200)) * np.logspace(0, -7, 200)
    a = rng.normal(size=(200, 280)) * np.logspace(0, -7, 200)[:, None]
    out = recompress(a, b, max_rank=16)
    optimal, actual = _optimal_and_actual(a, b, out, 16)
    assert actual <= 1.01 * optimal
    assert out.relative_error == pytest.approx(actual, rel=1e-4)


def test_gram_floor_sends_a_cancelling_stack_to_the_exact_route() -> None:
    # B small where A is large and the other way round: ‖B‖_F ‖A‖_F ≫ ‖BA‖_F, so tr(G_B G_A)
    # cancels below what float64 resolves; the QR route still finds the optimum
    rng = np.random.default_rng(13)
    b = rng.normal(size=(300, 200)) * np.logspace(0, -7, 200)
    a = rng.normal(size=(200, 280)) * np.logspace(-7, 0, 200)[:, None]
    assert _gram_recompress(a, b, max_rank=16, tol=0.0, seed=0) is None
    out = recompress(a, b, max_rank=16)
    assert out.method == "qr"
    optimal, actual = _optimal_and_actual(a, b, out, 16)
    assert actual == pytest.approx(optimal, rel=1e-6)


def test_gram_floor_sends_a_nearly_lossless_cap_to_the_exact_route() -> None:
    # rank 10 in a stack of 120: the dropped energy is rounding, which no Gram resolves; the
    # QR route returns the exact rank-10 product
    rng = np.random.default_rng(14)
    a0, b0 = _pair(rng, 10, 150, 160)
    mix = rng.normal(size=(10, 120))
    a, b = mix.T @ a0, b0 @ np.linalg.pinv(mix.T)  # B A = B0 A0, rank 10, R = 120
    out = recompress(a, b, max_rank=16)
    assert out.method == "qr" and out.rank == 10
    np.testing.assert_allclose(out.b @ out.a, b0 @ a0, atol=1e-9 * np.abs(b0 @ a0).max())


@settings(max_examples=25, deadline=None)
@given(
    k=st.integers(1, 8),
    extra=st.integers(0, 20),
    out_dim=st.integers(70, 100),
    in_dim=st.integers(70, 100),
    decay=st.floats(0.0, 8.0),
    seed=st.integers(0, 999),
)
def test_at_the_cap_property_within_one_percent(k, extra, out_dim, in_dim, decay, seed) -> None:
    rng = np.random.default_rng(seed)
    rank = 2 * (k + OVERSAMPLE) + extra  # the Gram route's range
    a, b = _spectral_stack(rng, rank=rank, out_dim=out_dim, in_dim=in_dim, decay=decay)
    out = recompress(a, b, max_rank=k)
    optimal, actual = _optimal_and_actual(a, b, out, k)
    assert out.rank == k
    assert actual <= 1.01 * optimal + 1e-12
    assert out.relative_error == pytest.approx(actual, rel=1e-5, abs=1e-12)


def test_gram_route_is_deterministic_and_below_the_cap_stays_exact() -> None:
    rng = np.random.default_rng(15)
    a, b = _spectral_stack(rng, rank=100, out_dim=150, in_dim=140, decay=2.0)
    one, two = recompress(a, b, max_rank=20), recompress(a, b, max_rank=20)
    assert one.method == "gram"
    np.testing.assert_array_equal(one.a, two.a)
    np.testing.assert_array_equal(one.b, two.b)
    assert recompress(a, b, max_rank=100).method == "qr"  # cap reaches R: exact route
    assert recompress(a, b, max_rank=40).method == "qr"  # R < 2 (k + p): QR is as fast


def test_gram_route_honours_the_tolerance_below_the_cap() -> None:
    rng = np.random.default_rng(16)
    a, b = _spectral_stack(rng, rank=150, out_dim=200, in_dim=180, decay=4.0)
    out = recompress(a, b, max_rank=40, tol=0.1)
    assert out.method == "gram"
    s = np.linalg.svd(b @ a, compute_uv=False)
    tail = np.sqrt(np.cumsum((s**2)[::-1])[::-1] / np.sum(s**2))  # tail[j]: error keeping j
    expected = int(np.argmax(tail <= 0.1))
    assert expected < 40  # the tolerance binds, not the cap
    assert out.rank == expected
    assert out.relative_error <= 0.1


def test_choose_rank_with_the_energy_of_the_whole_spectrum() -> None:
    s = np.array([4.0, 3.0])  # the leading two of a spectrum with energy 16 + 9 + 11
    # keeping 1 leaves sqrt(20)/6 = 0.745, keeping 2 leaves sqrt(11)/6 = 0.553
    assert choose_rank(s, max_rank=None, tol=0.8, energy=36.0) == 1
    assert choose_rank(s, max_rank=None, tol=0.6, energy=36.0) == 2
    assert choose_rank(s, max_rank=None, tol=0.5, energy=36.0) == 2  # unmet: all it has
    assert choose_rank(s, max_rank=None, tol=0.6) == 1  # without energy: 3/5 = 0.6


# --- streaming the round's stack, module by module ---------------------------------------------


def _node_updates(rng, nodes, modules, dim, rank, dtype=np.float32):
    return [
        {
            m: (
                rng.normal(size=(rank, dim)).astype(dtype),
                rng.normal(size=(dim, rank)).astype(dtype),
                2.0,
            )
            for m in modules
        }
        for _ in range(nodes)
    ]


@settings(max_examples=20, deadline=None)
@given(nodes=st.integers(1, 5), ranks=st.integers(1, 4), seed=st.integers(0, 999))
def test_accumulate_updates_is_exact_below_the_cap(nodes, ranks, seed) -> None:
    rng = np.random.default_rng(seed)
    updates = _node_updates(rng, nodes, ["m", "n"], 24, ranks, dtype=np.float64)
    weights = list(rng.dirichlet(np.ones(nodes)))
    previous = {"m": _pair(rng, 3, 24, 24), "other": _pair(rng, 2, 5, 5)}
    result = accumulate_updates(previous, updates, weights, scale=0.5, max_rank=None)
    for module in ("m", "n"):
        dense = 0.5 * sum(w * u[module][2] * u[module][1] @ u[module][0]
                          for u, w in zip(updates, weights, strict=True))  # fmt: skip
        if module in previous:
            dense = dense + previous[module][1] @ previous[module][0]
        a, b = result.adapter[module]
        np.testing.assert_allclose(b @ a, dense, rtol=1e-9, atol=1e-9 * np.abs(dense).max())
    assert result.adapter["other"] is previous["other"]
    assert result.relative_error <= 1e-12


def test_accumulate_updates_matches_stack_then_accumulate() -> None:
    rng = np.random.default_rng(17)
    updates = _node_updates(rng, 12, ["m"], 80, 4)
    weights = [1 / 12] * 12
    previous = {"m": _pair(rng, 8, 80, 80)}
    stacked = {m: (a, b, 0.7 * s) for m, (a, b, s) in stack(updates, weights).items()}
    ref = accumulate(previous, stacked, max_rank=8)
    got = accumulate_updates(previous, updates, weights, scale=0.7, max_rank=8)
    assert got.reports["m"].method == "gram32"  # R = 56 > 2 (8 + 16): float32 Grams
    assert got.relative_error == pytest.approx(ref.relative_error, rel=1e-3)


def test_accumulate_updates_refuses_bad_updates_like_stack() -> None:
    bad = [{"m": (np.ones((2, 4)), np.ones((3, 3)), 1.0)}]
    with pytest.raises(ValueError, match="cannot stack"):
        accumulate_updates({}, bad, [1.0], max_rank=4)


def test_accumulate_updates_peak_memory_is_one_module_not_every_float64_copy() -> None:
    # 40 rank-4 nodes on 8 modules (float32, as they arrive): the old route held every node's
    # float64 copy of every module (2x the factor bytes) before recompressing the first one
    rng = np.random.default_rng(18)
    modules = [f"m{i}" for i in range(8)]
    updates = _node_updates(rng, 40, modules, 256, 4)
    weights = [1 / 40] * 40
    factor_bytes = sum(a.nbytes + b.nbytes for u in updates for a, b, _ in u.values())
    tracemalloc.start()
    try:
        accumulate_updates({}, updates, weights, max_rank=16)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak <= 1.0 * factor_bytes

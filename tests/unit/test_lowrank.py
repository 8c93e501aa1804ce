"""Exact recompression: reconstruction below the cap, Eckart-Young error above it."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from strategies.math.lowrank import accumulate, choose_rank, recompress


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

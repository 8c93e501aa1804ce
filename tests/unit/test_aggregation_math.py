"""The baselines' math against hand-computed numbers and float64 references (issue 8)."""

from __future__ import annotations

import numpy as np
import pytest

from strategies.math.factors import truncate
from strategies.math.fedit import fedit_average
from strategies.math.ffa import ffa_average, public_a_mismatch
from strategies.math.flexlora import flexlora_average
from strategies.math.public_a import public_lora_a
from strategies.math.zeropad import zeropad_average

IN, OUT = 12, 10


def _dense(updates, weights, module="m"):
    pairs = zip((u[module] for u in updates), weights, strict=True)
    return sum(w * s * b @ a for (a, b, s), w in pairs)


def _product(adapter, module="m"):
    a, b = adapter[module]
    return b @ a


def test_fedit_hand_computed_differs_from_the_mean_of_the_products() -> None:
    one = {"m": (np.array([[1.0, 0.0]]), np.array([[1.0], [0.0]]), 1.0)}
    two = {"m": (np.array([[0.0, 1.0]]), np.array([[0.0], [1.0]]), 1.0)}
    out = fedit_average([one, two], [0.5, 0.5])
    a, b = out["m"]
    np.testing.assert_array_equal(a, [[0.5, 0.5]])
    np.testing.assert_array_equal(b, [[0.5], [0.5]])
    # (Σ B)(Σ A) = [[.25, .25], [.25, .25]] carries cross terms; Σ B_i A_i = [[.5, 0], [0, .5]]
    np.testing.assert_array_equal(b @ a, [[0.25, 0.25], [0.25, 0.25]])
    assert not np.allclose(b @ a, _dense([one, two], [0.5, 0.5]))


def test_fedit_equals_the_mean_of_the_products_when_all_a_are_equal() -> None:
    rng = np.random.default_rng(1)
    a = rng.normal(size=(4, IN))
    updates = [{"m": (a, rng.normal(size=(OUT, 4)), 2.0)} for _ in range(3)]
    weights = [0.2, 0.3, 0.5]
    np.testing.assert_allclose(
        _product(fedit_average(updates, weights)), _dense(updates, weights), rtol=1e-12
    )


def test_fedit_refuses_heterogeneous_ranks_naming_the_strategies_that_accept_them() -> None:
    rng = np.random.default_rng(2)
    updates = [{"m": (rng.normal(size=(r, IN)), rng.normal(size=(OUT, r)), 1.0)} for r in (4, 8)]
    with pytest.raises(ValueError, match="flora, flexlora, ffa, zeropad"):
        fedit_average(updates, [0.5, 0.5])


def test_zeropad_pads_averages_and_truncates_as_specified() -> None:
    one = {"m": (np.array([[1.0, 2.0]]), np.array([[1.0], [1.0]]), 2.0)}  # rank 1, s = 2
    two = {"m": (np.eye(2), np.eye(2), 1.0)}  # rank 2, s = 1
    a, b = zeropad_average([one, two], [0.5, 0.5])["m"]
    # A = .5 [[1, 2], [0, 0]] + .5 I ;  B = .5·2 [[1, 0], [1, 0]] + .5 I
    np.testing.assert_array_equal(a, [[1.0, 1.0], [0.0, 0.5]])
    np.testing.assert_array_equal(b, [[1.5, 0.0], [1.0, 0.5]])
    a1, b1 = truncate({"m": (a, b)}, 1)["m"]
    np.testing.assert_array_equal(a1, [[1.0, 1.0]])
    np.testing.assert_array_equal(b1, [[1.5], [1.0]])


def test_ffa_is_exact_with_nested_heterogeneous_ranks() -> None:
    rng = np.random.default_rng(3)
    seed, ranks, scalings = 7, (4, 8, 16), (2.0, 2.0, 0.5)
    updates = [
        {"m": (public_lora_a("m", rank=r, in_features=IN, seed=seed), rng.normal(size=(OUT, r)), s)}
        for r, s in zip(ranks, scalings, strict=True)
    ]
    weights = [0.2, 0.3, 0.5]
    first = ffa_average(updates, weights, previous={}, seed=seed)
    assert first["m"][0].shape == (16, IN)
    np.testing.assert_allclose(_product(first), _dense(updates, weights), rtol=1e-12)
    # a second round with η = 2 adds twice the mean update to the global, exactly
    second = ffa_average(updates[:2], [0.5, 0.5], previous=first, seed=seed, server_lr=2.0)
    expected = _product(first) + 2.0 * _dense(updates[:2], [0.5, 0.5])
    np.testing.assert_allclose(_product(second), expected, rtol=1e-12)


def test_ffa_spots_a_node_that_trained_a() -> None:
    a = public_lora_a("base_model.model.m", rank=4, in_features=IN, seed=0)
    assert public_a_mismatch({"m": (a.astype(np.float32), np.zeros((OUT, 4)), 1.0)}, seed=0) == ""
    assert "not the public seeded A" in public_a_mismatch({"m": (a + 1e-3, a.T, 1.0)}, seed=0)


def test_public_a_is_nested_and_differs_per_module_and_seed() -> None:
    big = public_lora_a("m", rank=16, in_features=IN, seed=0)
    np.testing.assert_array_equal(big[:4], public_lora_a("m", rank=4, in_features=IN, seed=0))
    assert np.abs(big).max() <= 1 / np.sqrt(IN)
    assert not np.allclose(big, public_lora_a("n", rank=16, in_features=IN, seed=0))
    assert not np.allclose(big, public_lora_a("m", rank=16, in_features=IN, seed=1))


def _flex_updates(rng):
    return [
        {"m": (rng.normal(size=(r, IN)), rng.normal(size=(OUT, r)), s)}
        for r, s in ((2, 2.0), (3, 1.0), (4, 0.5))
    ]


@pytest.mark.parametrize("rank", [1, 3, 6])
def test_flexlora_node_factors_are_the_best_rank_r_approximation(rank: int) -> None:
    updates, weights = _flex_updates(np.random.default_rng(4)), [0.2, 0.3, 0.5]
    result = flexlora_average(updates, weights, previous={})
    dense = _dense(updates, weights)
    np.testing.assert_allclose(_product(result.adapter), dense, atol=1e-12)  # no cap: exact
    u, s, vt = np.linalg.svd(dense)
    best = (u[:, :rank] * s[:rank]) @ vt[:rank]  # Eckart-Young, dense float64 reference
    node = truncate(result.adapter, rank)
    np.testing.assert_allclose(_product(node), best, atol=1e-10)
    error = np.linalg.norm(_product(node) - dense)
    assert error == pytest.approx(np.sqrt(np.sum(s[rank:] ** 2)), rel=1e-9)


def test_flexlora_server_lr_moves_the_global_towards_the_mean_exactly() -> None:
    rng = np.random.default_rng(5)
    previous = {"m": (rng.normal(size=(3, IN)), rng.normal(size=(OUT, 3)))}
    updates, weights = _flex_updates(rng), [0.2, 0.3, 0.5]
    result = flexlora_average(updates, weights, previous=previous, server_lr=1.5)
    expected = -0.5 * _product(previous) + 1.5 * _dense(updates, weights)
    np.testing.assert_allclose(_product(result.adapter), expected, atol=1e-10)


@pytest.mark.parametrize("rank", [2, 4, 8])
def test_flexlora_at_the_cap_node_factors_are_within_one_percent_of_the_best(rank: int) -> None:
    # 14 nodes of ranks 3..6 stack to R = 63 >= 2 (8 + 16): the float32 Gram route runs at cap 8
    rng = np.random.default_rng(6)
    updates = [
        {"m": (rng.normal(size=(r, 90)), rng.normal(size=(80, r)), 16 / r)}
        for r in [3, 4, 5, 6] * 3 + [4, 5]
    ]
    weights = list(rng.dirichlet(np.ones(len(updates))))
    result = flexlora_average(updates, weights, previous={}, max_rank=8)
    assert result.reports["m"].method == "gram32"
    dense = _dense(updates, weights)  # float64 reference
    s = np.linalg.svd(dense, compute_uv=False)
    optimal = np.sqrt(np.sum(s[rank:] ** 2))  # Eckart-Young
    node = truncate(result.adapter, rank)
    assert np.linalg.norm(_product(node) - dense) <= 1.01 * optimal
    assert result.relative_error == pytest.approx(
        np.linalg.norm(_product(result.adapter) - dense) / np.linalg.norm(dense), rel=1e-6
    )

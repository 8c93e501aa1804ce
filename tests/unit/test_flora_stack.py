"""FLoRA stacking against a dense float64 reference and its algebraic laws."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from strategies.math.flora import stack


def _client(rng: np.random.Generator, r: int, *, in_dim: int, out_dim: int, scaling: float):
    return {
        "q": (rng.normal(size=(r, in_dim)), rng.normal(size=(out_dim, r)), scaling),
        "v": (rng.normal(size=(r, out_dim)), rng.normal(size=(in_dim, r)), scaling),
    }


def _dense(update, weights, module):
    return sum(
        w * s * b @ a for (a, b, s), w in zip((u[module] for u in update), weights, strict=True)
    )


def test_hand_computed_two_clients() -> None:
    a1, b1 = np.array([[1.0, 2.0]]), np.array([[1.0], [0.0]])  # rank 1, s=2
    a2, b2 = np.array([[0.0, 1.0], [1.0, 0.0]]), np.eye(2)  # rank 2, s=0.5
    out = stack([{"m": (a1, b1, 2.0)}, {"m": (a2, b2, 0.5)}], [0.25, 0.75])
    a_st, b_st, scaling = out["m"]
    assert scaling == 1.0
    assert a_st.shape == (3, 2) and b_st.shape == (2, 3)
    # 0.25*2*[[1,2],[0,0]] + 0.75*0.5*[[0,1],[1,0]] = [[0.5, 1.375], [0.375, 0]]
    np.testing.assert_array_equal(b_st @ a_st, [[0.5, 1.375], [0.375, 0.0]])


def test_matches_float64_reference_with_heterogeneous_ranks() -> None:
    rng = np.random.default_rng(0)
    ranks, scalings = [4, 8, 16], [2.0, 2.0, 0.5]
    updates = [
        _client(rng, r, in_dim=32, out_dim=24, scaling=s)
        for r, s in zip(ranks, scalings, strict=True)
    ]
    weights = [0.2, 0.3, 0.5]
    out = stack(updates, weights)
    for module in ("q", "v"):
        a_st, b_st, _ = out[module]
        assert a_st.shape[0] == b_st.shape[1] == sum(ranks)
        ref = _dense(updates, weights, module)
        rel = np.linalg.norm(b_st @ a_st - ref) / np.linalg.norm(ref)
        assert rel <= 1e-10


def test_one_client_reduces_to_its_scaled_product() -> None:
    rng = np.random.default_rng(1)
    update = _client(rng, 5, in_dim=7, out_dim=9, scaling=3.0)
    a_st, b_st, _ = stack([update], [1.0])["q"]
    a, b, s = update["q"]
    np.testing.assert_allclose(b_st @ a_st, s * b @ a, rtol=1e-12, atol=1e-12)


@settings(max_examples=40, deadline=None)
@given(
    ranks=st.lists(st.integers(1, 6), min_size=1, max_size=5),
    seed=st.integers(0, 2**16),
    data=st.data(),
)
def test_client_order_does_not_change_the_product(ranks, seed, data) -> None:
    rng = np.random.default_rng(seed)
    updates = [_client(rng, r, in_dim=5, out_dim=4, scaling=float(r)) for r in ranks]
    weights = list(rng.uniform(0.1, 1.0, size=len(ranks)))
    perm = data.draw(st.permutations(range(len(ranks))))
    base = stack(updates, weights)
    permuted = stack([updates[i] for i in perm], [weights[i] for i in perm])
    for module in base:
        a, b, _ = base[module]
        pa, pb, _ = permuted[module]
        assert pa.shape[0] == sum(ranks)
        np.testing.assert_allclose(pb @ pa, b @ a, rtol=1e-10, atol=1e-10)


def test_mismatched_modules_are_refused_with_the_index() -> None:
    rng = np.random.default_rng(2)
    u0 = _client(rng, 2, in_dim=3, out_dim=3, scaling=1.0)
    u1 = {"q": u0["q"]}
    with pytest.raises(ValueError, match=r"updates\[1\]"):
        stack([u0, u1], [0.5, 0.5])


def test_swapped_factors_are_refused() -> None:
    a, b = np.ones((2, 5)), np.ones((4, 2))
    with pytest.raises(ValueError, match="need A"):
        stack([{"m": (b, a, 1.0)}], [1.0])


def test_dimension_mismatch_between_clients_is_refused() -> None:
    u0 = {"m": (np.ones((2, 5)), np.ones((4, 2)), 1.0)}
    u1 = {"m": (np.ones((2, 6)), np.ones((4, 2)), 1.0)}
    with pytest.raises(ValueError, match="one base model"):
        stack([u0, u1], [0.5, 0.5])


@pytest.mark.parametrize("weights", [[float("nan")], [-1.0]])
def test_bad_weights_are_refused(weights) -> None:
    with pytest.raises(ValueError, match=r"`weights\[0\]`"):
        stack([{"m": (np.ones((1, 2)), np.ones((2, 1)), 1.0)}], weights)

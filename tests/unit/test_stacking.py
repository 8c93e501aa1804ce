"""Streaming change-stacking for continuing FLoRA, and the float32 Gram route with its certified
error: exact against float64 references below the cap, within 1% of Eckart-Young at it."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from strategies.math.flora import node_start, stack_changes
from strategies.math.gram32 import stack_leading
from strategies.math.lowrank import OVERSAMPLE, accumulate, recompress_stack
from strategies.math.stacking import change_stack, module_stack
from strategies.math.streaming import accumulate_changes


def _nodes(rng, ranks, scalings, dims, dtype=np.float32):
    return [
        {m: (rng.normal(size=(r, i)).astype(dtype), rng.normal(size=(o, r)).astype(dtype), s)
         for m, (o, i) in dims.items()}
        for r, s in zip(ranks, scalings, strict=True)
    ]  # fmt: skip


def _reference(global_adapter, updates, weights, scale):
    """float64: ``B_g A_g + scale Σ_i w_i s_i (B_i A_i - B_i0 A_i0)`` via stack_changes."""
    starts = [node_start(global_adapter, rank=next(iter(u.values()))[0].shape[0],
                         scaling=next(iter(u.values()))[2]) for u in updates]  # fmt: skip
    stacked = stack_changes(updates, starts, weights)
    return {m: (a, b, scale * s) for m, (a, b, s) in stacked.items()}


@settings(max_examples=30, deadline=None)
@given(
    ranks=st.lists(st.integers(1, 6), min_size=1, max_size=5),
    global_rank=st.integers(0, 7),
    scale=st.floats(0.25, 2.0),
    seed=st.integers(0, 10_000),
)
def test_change_stacking_is_exact_below_the_cap(ranks, global_rank, scale, seed) -> None:
    rng = np.random.default_rng(seed)
    dims = {"q": (14, 12), "v": (12, 16)}
    scalings = [float(rng.choice([0.5, 2.0, 16 / r])) for r in ranks]
    updates = _nodes(rng, ranks, scalings, dims)
    weights = list(rng.dirichlet(np.ones(len(ranks))))
    global_adapter = {m: (rng.normal(size=(global_rank, i)), rng.normal(size=(o, global_rank)))
                      for m, (o, i) in dims.items()}  # fmt: skip
    global_adapter["q"] = (global_adapter["q"][0] * 3.0, global_adapter["q"][1])  # uneven scales
    result = accumulate_changes(global_adapter, updates, weights, scale=scale, max_rank=None)
    reference = accumulate(global_adapter, _reference(global_adapter, updates, weights, scale),
                           max_rank=None)  # fmt: skip
    for module in dims:
        a_g, b_g = global_adapter[module]
        dense = b_g @ a_g  # float64, written out: the global plus each node's change
        for update, w in zip(updates, weights, strict=True):
            a, b, s = update[module]
            k = min(a.shape[0], global_rank)
            b0 = (b_g[:, :k].astype(np.float32) / s).astype(np.float32).astype(np.float64)
            a0 = a_g[:k].astype(np.float32).astype(np.float64)
            dense += scale * w * s * (b.astype(np.float64) @ a - b0 @ a0)
        a_new, b_new = result.adapter[module]
        a_ref, b_ref = reference.adapter[module]
        tol = 1e-10 * max(np.abs(dense).max(), 1e-300)
        np.testing.assert_allclose(b_new @ a_new, dense, rtol=0, atol=tol)
        np.testing.assert_allclose(b_new @ a_new, b_ref @ a_ref, rtol=0, atol=tol)
        widest: dict[float, int] = {}
        for r, s in zip(ranks, scalings, strict=True):
            widest[s] = max(widest.get(s, 0), min(r, global_rank))
        starts = 2 * sum(widest.values()) if global_rank else 0
        assert result.reports[module].stacked_rank == global_rank + sum(ranks) + starts
    assert result.relative_error <= 1e-12


def test_collapsed_starts_cost_one_block_per_scaling_not_one_per_node() -> None:
    rng = np.random.default_rng(1)
    global_adapter = {"m": (rng.normal(size=(8, 40)), rng.normal(size=(30, 8)))}
    ranks, scalings = [4, 4, 12, 2, 6], [2.0, 2.0, 2.0, 2.0, 0.5]
    updates = _nodes(rng, ranks, scalings, {"m": (30, 40)})
    coefs = [0.1, 0.2, 0.3, 0.2, 0.2]
    stack = change_stack(global_adapter["m"], [u["m"] for u in updates], coefs)
    assert stack.rank == 8 + 28 + 2 * 8 + 2 * 6  # global, nodes, two blocks per scaling
    starts = [
        node_start(global_adapter, rank=r, scaling=s) for r, s in zip(ranks, scalings, strict=True)
    ]
    weights = [c / s for c, s in zip(coefs, scalings, strict=True)]
    reference = stack_changes(updates, starts, weights)["m"]
    assert reference[0].shape[0] == 28 + 4 + 4 + 8 + 2 + 6  # the old stack: every start
    a, b = stack.dense_factors()
    dense = b @ a - global_adapter["m"][1] @ global_adapter["m"][0]
    np.testing.assert_allclose(dense, reference[1] @ reference[0], atol=1e-12)


def _at_the_cap(rng, *, nodes, rank, dim, global_rank, decay):
    """A global of decaying spectrum and continuing nodes that moved a little from it."""
    a_g = rng.normal(size=(global_rank, dim)) * np.logspace(0, -decay, global_rank)[:, None]
    global_adapter = {"m": (a_g, rng.normal(size=(dim + 10, global_rank)))}
    updates = []
    for _ in range(nodes):
        a0, b0 = node_start(global_adapter, rank=rank, scaling=2.0)["m"]
        a = rng.normal(size=(rank, dim)).astype(np.float32)  # the fresh components
        b = 0.3 * rng.normal(size=(dim + 10, rank)).astype(np.float32)  # moved from B = 0
        a[: a0.shape[0]] = a0 + 0.3 * rng.normal(size=a0.shape).astype(np.float32)
        b[:, : b0.shape[1]] += b0
        updates.append({"m": (a, b, 2.0)})
    return global_adapter, updates


@settings(max_examples=15, deadline=None)
@given(
    nodes=st.integers(14, 20),
    rank=st.integers(4, 6),
    cap=st.integers(2, 8),
    decay=st.floats(0.0, 4.0),
    seed=st.integers(0, 10_000),
    certified=st.booleans(),
)
def test_change_stacking_at_the_cap_is_within_one_percent_of_eckart_young(
    nodes, rank, cap, decay, seed, certified
) -> None:
    rng = np.random.default_rng(seed)
    global_adapter, updates = _at_the_cap(rng, nodes=nodes, rank=rank, dim=150, global_rank=cap,
                                          decay=decay)  # fmt: skip
    weights = list(rng.dirichlet(np.ones(nodes)))
    if certified:  # the float32 Gram route, as a set `recompress-tol` takes it
        coefs = [w * u["m"][2] for u, w in zip(updates, weights, strict=True)]
        stack = change_stack(global_adapter["m"], [u["m"] for u in updates], coefs)
        report = recompress_stack(stack, max_rank=cap, certified=True)
    else:  # the default: the range route, its error estimated
        report = accumulate_changes(global_adapter, updates, weights, max_rank=cap).reports["m"]
    stacked = _reference(global_adapter, updates, weights, 1.0)["m"]
    a_g, b_g = global_adapter["m"]
    dense = b_g @ a_g + stacked[1] @ stacked[0]  # float64 reference
    s = np.linalg.svd(dense, compute_uv=False)
    optimal = np.sqrt(np.sum(s[cap:] ** 2) / np.sum(s**2))  # Eckart-Young
    actual = np.linalg.norm(dense - report.b @ report.a) / np.linalg.norm(dense)
    assert report.stacked_rank >= 2 * (cap + OVERSAMPLE)
    assert actual <= 1.01 * optimal + 1e-12
    if certified:
        assert report.method == "gram32"  # the float32 route at the cap ran
        assert report.relative_error == pytest.approx(actual, rel=5e-3, abs=1e-12)  # guaranteed
    elif report.method == "range":  # a wide enough stack: the estimate
        norm = np.linalg.norm(dense)
        assert abs(report.error - actual * norm) <= 5 * report.error_sd + 1e-9 * norm
    else:  # where the certified route costs less, it runs
        assert report.method == "gram32" and not report.estimated
        assert report.relative_error == pytest.approx(actual, rel=5e-3, abs=1e-12)


@settings(max_examples=25, deadline=None)
@given(
    nodes=st.integers(6, 12),
    rank=st.integers(2, 6),
    global_weight=st.floats(0.0, 1e4),
    seed=st.integers(0, 10_000),
)
@example(nodes=6, rank=3, global_weight=4893.0, seed=251)  # a basis 2e-7 from orthonormal
def test_float32_gram_energy_stays_within_its_bound(nodes, rank, global_weight, seed) -> None:
    rng = np.random.default_rng(seed)
    dim = 70
    previous = (rng.normal(size=(6, dim)) * global_weight, rng.normal(size=(dim, 6)))
    blocks = [(rng.normal(size=(rank, dim)).astype(np.float32),
               rng.normal(size=(dim, rank)).astype(np.float32), float(rng.uniform(0.01, 3)))
              for _ in range(nodes)]  # fmt: skip
    stack = module_stack(previous, blocks)
    lead = stack_leading(stack, rank=4, width=8)
    a, b = stack.dense_factors()
    true = np.linalg.norm(b @ a) ** 2  # float64 reference
    assert lead is not None
    assert abs(lead.energy - true) <= lead.floor
    assert lead.floor <= 1e-3 * true  # and the bound is of use
    # the basis is orthonormal and C = Qᵀ M to float64 rounding, whatever the Grams' rounding
    np.testing.assert_allclose(lead.q.T @ lead.q, np.eye(lead.q.shape[1]), atol=1e-8)
    np.testing.assert_allclose(lead.c, lead.q.T @ (b @ a), atol=1e-10 * np.sqrt(true))


def test_a_nearly_lossless_cap_leaves_the_float32_route() -> None:
    # the dropped energy is rounding: float32 Grams cannot certify it, nor float64 ones; the
    # exact route returns the rank-10 product
    rng = np.random.default_rng(3)
    a0, b0 = rng.normal(size=(10, 150)), rng.normal(size=(160, 10))
    mix = rng.normal(size=(10, 120))
    a, b = (mix.T @ a0).astype(np.float32), (b0 @ np.linalg.pinv(mix.T)).astype(np.float32)
    stack = module_stack(None, [(a, b, 1.0)])
    out = recompress_stack(stack, max_rank=16)
    assert out.method == "qr" and out.rank == 10
    dense_a, dense_b = stack.dense_factors()
    np.testing.assert_allclose(out.b @ out.a, dense_b @ dense_a, atol=1e-9)


def test_change_stacking_peak_memory_is_one_module_not_every_float64_copy() -> None:
    # 40 continuing rank-4 nodes on 8 modules (float32): the old route (stack_changes, then
    # accumulate) held every node's float64 [B_i, -B_i0], [A_i; A_i0] of every module at once
    rng = np.random.default_rng(4)
    modules = {f"m{i}": (256, 256) for i in range(8)}
    global_adapter = {m: (rng.normal(size=(16, 256)), rng.normal(size=(256, 16))) for m in modules}
    updates = _nodes(rng, [4] * 40, [2.0] * 40, modules)
    weights = [1 / 40] * 40
    factor_bytes = sum(a.nbytes + b.nbytes for u in updates for a, b, _ in u.values())
    tracemalloc.start()
    try:
        accumulate_changes(global_adapter, updates, weights, max_rank=16)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak <= 1.2 * factor_bytes  # the old route: 9.3 x


def test_a_stack_wider_than_the_module_takes_the_dense_route_within_one_percent() -> None:
    # 30 rank-4 nodes on 90 x 100: R = 8 + 120 >= 90, where factoring the stack costs more than
    # forming M; the float64 reference of the dense truncation
    rng = np.random.default_rng(5)
    previous = (rng.normal(size=(8, 100)), rng.normal(size=(90, 8)))
    blocks = [(rng.normal(size=(4, 100)).astype(np.float32),
               rng.normal(size=(90, 4)).astype(np.float32), 0.05) for _ in range(30)]  # fmt: skip
    stack = module_stack(previous, blocks)
    out = recompress_stack(stack, max_rank=6, certified=True)
    a, b = stack.dense_factors()
    dense = b @ a
    s = np.linalg.svd(dense, compute_uv=False)
    optimal = np.sqrt(np.sum(s[6:] ** 2) / np.sum(s**2))
    actual = np.linalg.norm(dense - out.b @ out.a) / np.linalg.norm(dense)
    assert out.method == "dense" and out.rank == 6 and out.stacked_rank == 128
    assert actual <= 1.01 * optimal
    assert out.relative_error == pytest.approx(actual, rel=1e-8)


def test_a_float32_change_stack_is_the_float64_one_rounded() -> None:
    # the range route's stack: movements rounded once to float32 and summed into the collapsed
    # starts by one product per scaling (two scalings here); the exact stack's ΔW to float32
    # rounding
    rng = np.random.default_rng(21)
    global_adapter, updates = _at_the_cap(rng, nodes=12, rank=5, dim=60, global_rank=4, decay=1.0)
    mixed = [{"m": (a, b, 2.0 if i % 3 else 1.0)} for i, u in enumerate(updates)
             for a, b, _ in [u["m"]]]  # fmt: skip
    coefs = [0.1 * (i + 1) for i in range(12)]
    factors = [u["m"] for u in mixed]
    exact = change_stack(global_adapter["m"], factors, coefs)
    rounded = change_stack(global_adapter["m"], factors, coefs, dtype=np.float32)
    assert rounded.a.dtype == np.float32 and rounded.rank == exact.rank
    a, b = exact.dense_factors()
    a32, b32 = rounded.dense_factors()
    dense = b @ a
    np.testing.assert_allclose(b32 @ a32, dense, atol=1e-5 * np.abs(dense).max())

"""Streamed accumulation: one module's stack at a time, built from the nodes' arrays as parsed.

FLoRA (fresh nodes: :func:`accumulate_updates`; continuing nodes: :func:`accumulate_changes`)
and FlexLoRA append a round to the global adapter module by module; each module's stack
(:mod:`strategies.math.stacking`) is recompressed (:mod:`strategies.math.lowrank`) and released
before the next is built, so peak memory is one module's stack, not every node's float64 copy.

At the cap without an energy tolerance the range route runs first
(:func:`strategies.math.lowrank.estimate_stack`). It needs no float64 stack, so a continuing
stack is built for it in float32 (the nodes' movements rounded once more, far below what the
route resolves); where the route does not apply or declines, the module's stack is built again
exactly (float64 movements) for the certified routes, which are exact below the cap.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from strategies.math.factors import Factors, LowRank
from strategies.math.flora import check_updates
from strategies.math.lowrank import (
    Accumulated,
    Recompressed,
    estimate_stack,
    range_applies,
    recompress_stack,
)
from strategies.math.stacking import ModuleStack, change_rank, change_stack, module_stack


def accumulate_updates(
    global_adapter: Mapping[str, LowRank],
    updates: Sequence[Mapping[str, Factors]],
    weights: Sequence[float],
    *,
    scale: float = 1.0,
    max_rank: int | None,
    tol: float = 0.0,
) -> Accumulated:
    """Append ``scale · Σ_i w_i s_i B_i A_i`` (FLoRA's stack) to the global adapter per module.

    The same result as ``accumulate(global_adapter, stack(updates, weights))`` with the stacked
    scaling times ``scale``, but each module's stack is built from the nodes' arrays as they
    arrived (:func:`strategies.math.stacking.module_stack`) and released before the next module:
    peak memory is one module's stack, not every node's float64 copy of every module.

    Parameters
    ----------
    global_adapter
        Module -> (A_g (k, in), B_g (out, k)); modules the updates lack stay unchanged.
    updates, weights
        One mapping module -> (A_i (r_i, in), B_i (out, r_i), s_i) per node and its weight,
        checked as :func:`strategies.math.flora.stack` checks them.
    scale
        A factor on the whole round's update (the server learning rate η).
    max_rank, tol
        The cap and the energy tolerance of :func:`recompress`.
    """
    check_updates(updates, weights)

    def build(module: str, rounded: bool) -> ModuleStack:  # as sent: float32 either way
        blocks = [
            (u[module][0], u[module][1], scale * weight * u[module][2])
            for u, weight in zip(updates, weights, strict=True)
        ]
        return module_stack(global_adapter.get(module), blocks)

    def shape(module: str) -> tuple[int, int, int]:
        a, b, _ = updates[0][module]
        previous = global_adapter.get(module)
        rank = sum(u[module][0].shape[0] for u in updates)
        return rank + (0 if previous is None else previous[0].shape[0]), b.shape[0], a.shape[1]

    return _streamed(global_adapter, sorted(updates[0]), build, shape, max_rank=max_rank, tol=tol)


def accumulate_changes(
    global_adapter: Mapping[str, LowRank],
    updates: Sequence[Mapping[str, Factors]],
    weights: Sequence[float],
    *,
    scale: float = 1.0,
    max_rank: int | None,
    tol: float = 0.0,
    wire_dtype: type = np.float32,
) -> Accumulated:
    """Append continuing nodes' changes, ``scale · Σ_i w_i s_i (B_i A_i - B_i0 A_i0)``, per module.

    The same result as ``accumulate(global_adapter, stack_changes(updates, starts, weights))``
    with each node's start from :func:`strategies.math.flora.node_start`, but streamed one
    module at a time like :func:`accumulate_updates`, and with the nodes' starts collapsed into
    one block (:mod:`strategies.math.stacking`): the stack's rank is ``k_g + Σ r_i + max k_i``.

    Parameters
    ----------
    global_adapter
        Module -> (A_g (k, in), B_g (out, k)): what the nodes started from.
    updates, weights
        One mapping module -> (A_i (r_i, in), B_i (out, r_i), s_i) per node after training, and
        its weight; a node's start is ``node_start(global_adapter, rank=r_i, scaling=s_i)``.
    scale, max_rank, tol
        As :func:`accumulate_updates`.
    wire_dtype
        The dtype the global adapter reached the nodes in (their start is rounded to it).
    """
    check_updates(updates, weights)

    def build(module: str, rounded: bool) -> ModuleStack:
        factors = [u[module] for u in updates]
        coefs = [scale * w * s for (_, _, s), w in zip(factors, weights, strict=True)]
        dtype = np.float32 if rounded else np.float64
        return change_stack(global_adapter.get(module), factors, coefs, wire_dtype=wire_dtype,
                            dtype=dtype)  # fmt: skip

    def shape(module: str) -> tuple[int, int, int]:
        a, b, _ = updates[0][module]
        rank = change_rank(global_adapter.get(module), [u[module] for u in updates])
        return rank, b.shape[0], a.shape[1]

    return _streamed(global_adapter, sorted(updates[0]), build, shape, max_rank=max_rank, tol=tol)


def _streamed(
    global_adapter: Mapping[str, LowRank],
    modules: Sequence[str],
    build: Callable[[str, bool], ModuleStack],
    shape: Callable[[str], tuple[int, int, int]],
    *,
    max_rank: int | None,
    tol: float,
) -> Accumulated:
    """Recompress one module's stack at a time (``build(module, rounded)``), each released
    before the next: peak memory is one module's stack. The range route first where it
    applies (``shape(module)``: the stack's R, out and in before it is built), on a stack that
    may be rounded to float32; else, or where it declines, the exact stack and the certified
    routes."""
    adapter: dict[str, LowRank] = dict(global_adapter)
    reports: dict[str, Recompressed] = {}
    for module in modules:  # a seed per module: the modules' estimates are independent
        seed = zlib.crc32(module.encode())
        report = None
        if max_rank is not None and tol == 0 and range_applies(*shape(module), max_rank=max_rank):
            report = estimate_stack(build(module, True), max_rank=max_rank, seed=seed)
        if report is None:
            exact = build(module, False)  # released before the next module's is built
            report = recompress_stack(exact, max_rank=max_rank, tol=tol, seed=seed, certified=True)
            del exact
        adapter[module] = (report.a, report.b)
        reports[module] = report
    return Accumulated(adapter, reports)

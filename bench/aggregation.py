"""Aggregation at scale: every strategy's math against the dense reference, time and peak memory.

Rank-16 nodes on Llama-7B q/v shapes (4096 × 4096; ``modules`` of the 64 such modules, since
the work is per module and the ratios do not depend on how many), at 10 and 100 nodes, and
1000 nodes on one layer's q_proj. The reference forms Σ p_i s_i B_i A_i densely in float32
(out × in per module). FLoRA (``flora``: continuing nodes, the default; ``flora-fresh``: the
paper's) and FlexLoRA append to a rank-64 global adapter (a round in steady state) and
recompress to ``max-global-rank`` 64; continuing nodes start from the global's first 16
components (``node_start``) and move by the same random step as the others' factors. At the cap
they take the range route (``strategies/math/rangefinder.py``: ``recompress-tol`` 0, the
default). Time is the process's CPU time, meant with one BLAS thread (run the bench with
``OPENBLAS_NUM_THREADS=1``: numpy reads it at import, so this module cannot set it; the dense
reference's detail says what it ran with), which other work on a shared machine does not inflate
the way it inflates wall time; each route's best of two calls (:func:`cpu_traced`). Peak memory:
tracemalloc's peak of the call (numpy allocations), over the factor bytes the nodes sent (fp32).
Issue 14's goals, at 100 and 1000 nodes: ≥ 10× the dense sum's speed, ≤ 3× the factor bytes.
"""

from __future__ import annotations

import gc
import math
import os
import time
import tracemalloc
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from bench.common import Figure
from strategies.math.factors import Factors, LowRank
from strategies.math.fedit import fedit_average
from strategies.math.ffa import ffa_average
from strategies.math.flexlora import flexlora_average
from strategies.math.flora import node_start
from strategies.math.streaming import accumulate_changes, accumulate_updates
from strategies.math.zeropad import zeropad_average

CAP = 64
RANK = 16
Updates = list[dict[str, Factors]]
Aggregate = Callable[[Updates, list[float], Mapping[str, LowRank]], object]


def _flora(updates: Updates, weights: list[float], previous: Mapping[str, LowRank]) -> object:
    """Continuing FLoRA as the strategy calls it, on nodes that continued from ``previous``."""
    return accumulate_changes(previous, updates, weights, max_rank=CAP)


def _flora_fresh(updates: Updates, weights: list[float], previous: Mapping[str, LowRank]) -> object:
    return accumulate_updates(previous, updates, weights, max_rank=CAP)  # as the strategy calls it


def continued(updates: Updates, previous: Mapping[str, LowRank]) -> Updates:
    """Each node's factors as a continuing node's: its start (``node_start``) plus its step."""
    moved = []
    for update in updates:
        node: dict[str, Factors] = {}
        for module, (a, b, scaling) in update.items():
            a0, b0 = node_start(previous, rank=a.shape[0], scaling=scaling)[module]
            node[module] = (a0 + a, b0 + b, scaling)
        moved.append(node)
    return moved


GOALS = ("flora", "flora-fresh", "flexlora")  # held to issue 14's goals at >= 100 nodes
STRATEGIES: dict[str, Aggregate] = {
    "flora": _flora,
    "flora-fresh": _flora_fresh,
    "flexlora": lambda u, w, g: flexlora_average(u, w, previous=g, max_rank=CAP),
    "fedit": lambda u, w, g: fedit_average(u, w),
    "zeropad": lambda u, w, g: zeropad_average(u, w),
    "ffa": lambda u, w, g: ffa_average(u, w, previous={}, seed=0),
}


def cpu_traced(fn: Callable[[], object], *, repeats: int = 2) -> tuple[float, int]:
    """The least CPU seconds of ``repeats`` calls of ``fn()`` and the peak bytes one call
    allocated (tracemalloc). Best of two: the first call of a large route in a process can pay
    a second or more of first-touch page faults that the next does not (a server aggregates
    round after round in one process), and which route runs first is an accident of order."""
    seconds, peak = math.inf, 0
    for _ in range(repeats):
        gc.collect()
        tracemalloc.start()
        try:
            start = time.process_time()
            fn()
            seconds = min(seconds, time.process_time() - start)
            peak = max(peak, tracemalloc.get_traced_memory()[1])
        finally:
            tracemalloc.stop()
    return seconds, peak


def dense_reference(updates: Updates, weights: Sequence[float]) -> dict[str, np.ndarray]:
    """Σ_i p_i s_i B_i A_i per module, formed densely in float32."""
    dense = {}
    for module in updates[0]:
        a0, b0, _ = updates[0][module]
        total = np.zeros((b0.shape[0], a0.shape[1]), dtype=np.float32)  # (out, in)
        for update, weight in zip(updates, weights, strict=True):
            a, b, scaling = update[module]
            total += np.float32(weight * scaling) * (b @ a)
        dense[module] = total
    return dense


def make_updates(nodes: int, modules: list[str], dim: int, seed: int) -> Updates:
    rng = np.random.default_rng(seed)
    return [
        {
            m: (
                rng.standard_normal((RANK, dim), dtype=np.float32) * 0.01,
                rng.standard_normal((dim, RANK), dtype=np.float32) * 0.01,
                2.0,
            )
            for m in modules
        }
        for _ in range(nodes)
    ]


def previous_global(modules: list[str], dim: int) -> dict[str, LowRank]:
    rng = np.random.default_rng(7)
    return {
        m: (rng.standard_normal((CAP, dim)) * 0.01, rng.standard_normal((dim, CAP)) * 0.01)
        for m in modules
    }


def case(
    nodes: int,
    modules: list[str],
    *,
    dim: int = 4096,
    strategies: Sequence[str] = tuple(STRATEGIES),
) -> list[Figure]:
    """Every strategy vs the dense reference on one federation size."""
    updates = make_updates(nodes, modules, dim, seed=nodes)
    weights = [1.0 / nodes] * nodes
    previous = previous_global(modules, dim)
    continuing = continued(updates, previous) if "flora" in strategies else updates
    factor_bytes = sum(a.nbytes + b.nbytes for u in updates for a, b, _ in u.values())
    t_dense, m_dense = cpu_traced(lambda: dense_reference(updates, weights))
    label = f"{nodes} nodes × {len(modules)} module(s) {dim}×{dim}, rank {RANK}"
    figures = [
        Figure(
            "aggregation",
            f"dense float32 reference, {label}",
            t_dense,
            "s",
            "",
            f"peak {m_dense / 1e6:.0f} MB; factors {factor_bytes / 1e6:.0f} MB; "
            f"OPENBLAS_NUM_THREADS={os.environ.get('OPENBLAS_NUM_THREADS', 'unset')}",
        )
    ]
    for name in strategies:
        fn = STRATEGIES[name]
        given = continuing if name == "flora" else updates  # built beforehand, not timed
        seconds, peak = cpu_traced(lambda fn=fn, u=given: fn(u, weights, previous))  # type: ignore[misc]
        held = name in GOALS and nodes >= 100  # issue 14's goals
        speed_goal = ">= 10" if held else ""
        memory_goal = "<= 3" if held else ""
        detail = f"{seconds:.2f} s vs dense {t_dense:.2f} s (CPU)"
        figures += [
            Figure(
                "aggregation",
                f"{name}: speed-up over dense, {label}",
                t_dense / seconds,
                "×",
                speed_goal,
                detail,
            ),
            Figure(
                "aggregation",
                f"{name}: peak memory / factor bytes, {label}",
                peak / factor_bytes,
                "×",
                memory_goal,
                f"{peak / 1e6:.0f} MB vs factors {factor_bytes / 1e6:.0f} MB, "
                f"dense {m_dense / 1e6:.0f} MB",
            ),
        ]
    return figures


def run(*, modules: int = 2) -> list[Figure]:
    """10 and 100 nodes on ``modules`` q/v modules; 1000 nodes on one q_proj, every strategy
    (FLoRA and FlexLoRA there take 2-4 s of CPU each on the range route)."""
    names = [f"layers.{i // 2}.self_attn.{'q' if i % 2 == 0 else 'v'}_proj" for i in range(modules)]
    return case(10, names) + case(100, names) + case(1000, names[:1])

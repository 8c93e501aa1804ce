"""FLoRA with continuing nodes: the change stacking is exact against a float64 reference, and
the strategy credits a node with its change only (numpy nodes in-process, no torch)."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from server.simulation.inprocess import InProcessGrid, node_contexts
from strategies import protocol as p
from strategies.flower.flora import FLoRA
from strategies.flower.replies import ClientUpdate
from strategies.math.factors import split_factor_keys
from strategies.math.flora import node_start, stack_changes
from strategies.options import AggregationOptions, Federation
from strategies.registry import STRATEGIES

DIM = 32


def _update(rng: np.random.Generator, rank: int, scaling: float) -> dict:
    return {"q": (rng.normal(size=(rank, 12)), rng.normal(size=(10, rank)), scaling),
            "v": (rng.normal(size=(rank, 10)), rng.normal(size=(12, rank)), scaling)}  # fmt: skip


def test_stacked_changes_match_the_float64_reference() -> None:
    rng = np.random.default_rng(0)
    ranks, scalings, weights = [4, 8, 16], [2.0, 2.0, 0.5], [0.2, 0.3, 0.5]
    global_adapter = {"q": (rng.normal(size=(6, 12)), rng.normal(size=(10, 6))),
                      "v": (rng.normal(size=(6, 10)), rng.normal(size=(12, 6)))}  # fmt: skip
    updates = [_update(rng, r, s) for r, s in zip(ranks, scalings, strict=True)]
    starts = [node_start(global_adapter, rank=r, scaling=s, wire_dtype=np.float64)
              for r, s in zip(ranks, scalings, strict=True)]  # fmt: skip
    out = stack_changes(updates, starts, weights)
    for module in ("q", "v"):
        a_g, b_g = global_adapter[module]
        reference = np.zeros((b_g.shape[0], a_g.shape[1]))
        for (a, b, s), r, w in zip((u[module] for u in updates), ranks, weights, strict=True):
            k = min(r, 6)
            reference += w * (s * b @ a - b_g[:, :k] @ a_g[:k])  # the change from the start
        a_st, b_st, scaling = out[module]
        assert scaling == 1.0 and a_st.shape[0] == sum(r + min(r, 6) for r in ranks)
        assert np.linalg.norm(b_st @ a_st - reference) <= 1e-12 * np.linalg.norm(reference)


def test_a_node_that_did_not_move_contributes_nothing() -> None:
    rng = np.random.default_rng(1)
    global_adapter = {"q": (rng.normal(size=(3, 12)), rng.normal(size=(10, 3)))}
    start = node_start(global_adapter, rank=4, scaling=2.0, wire_dtype=np.float64)
    a0, b0 = start["q"]
    a_fresh = np.vstack([a0, rng.normal(size=(1, 12))])  # the 4th component started fresh, B = 0
    b_fresh = np.hstack([b0, np.zeros((10, 1))])
    a_st, b_st, _ = stack_changes([{"q": (a_fresh, b_fresh, 2.0)}], [start], [1.0])["q"]
    np.testing.assert_allclose(b_st @ a_st, 0.0, atol=1e-12)
    np.testing.assert_allclose(2.0 * b0 @ a0, global_adapter["q"][1] @ global_adapter["q"][0])


def test_starts_must_pair_with_updates() -> None:
    with pytest.raises(ValueError, match="`starts` has 0 entries for 1 updates"):
        stack_changes([{"q": (np.ones((1, 2)), np.ones((2, 1)), 1.0)}], [], [1.0])


def _node_app(step: float) -> ClientApp:
    """A node that continues from the global as the node does (node_start) and moves its B by
    ``step`` times a fixed direction; round 1 starts at A = ones/8, B = 0."""
    app = ClientApp()

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        rank = int(context.node_config["lora-rank"])
        config = msg.content.config_records[p.CONFIG]
        assert config[p.NODE_MODE] == p.CONTINUE_MERGED
        pairs, _ = split_factor_keys(p.from_record(msg.content.array_records[p.ARRAYS]))
        a, b = np.ones((rank, DIM)) / 8, np.zeros((DIM, rank))
        if pairs:
            a0, b0 = node_start(pairs, rank=rank, scaling=2.0)["m"]
            a[: a0.shape[0]], b[:, : b0.shape[1]] = a0, b0
        b = b + step * np.eye(DIM, rank)
        arrays = {"m.lora_A.weight": a, "m.lora_B.weight": b}
        record, layout = p.pack_factors(arrays, modules_digest=config.get(p.MODULES_DIGEST))
        adapter = {**layout, p.RANK: rank, p.ALPHA: 2.0 * rank, p.NODE_NAME: f"n{context.node_id}",
                   p.GLOBAL_FINGERPRINT: config[p.GLOBAL_FINGERPRINT]}  # fmt: skip
        metrics = MetricRecord({p.NUM_EXAMPLES: 10, p.TRAIN_LOSS: 1.0})
        content = RecordDict({p.ARRAYS: record, p.METRICS: metrics,
                              p.ADAPTER: ConfigRecord(adapter)})  # type: ignore[arg-type]  # fmt: skip
        return Message(content, reply_to=msg)

    @app.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        metrics = MetricRecord({p.EVAL_LOSS: 1.0, p.NUM_EXAMPLES: 1})
        return Message(RecordDict({p.METRICS: metrics}), reply_to=msg)

    return app


def _global_after(rounds: int, step: float, ranks: list[int]) -> np.ndarray:
    grid = InProcessGrid(_node_app(step), node_contexts([{"lora-rank": r} for r in ranks], {}))
    strategy = FLoRA(federation=Federation(min_nodes=1), options=AggregationOptions(),
                     modules={"m": (DIM, DIM)})  # fmt: skip
    strategy.start(grid, ArrayRecord(), num_rounds=rounds, timeout=10.0,
                   train_config=ConfigRecord({"seed": 0}))  # fmt: skip
    a_g, b_g = strategy._global["m"]
    return b_g @ a_g


@pytest.mark.parametrize("ranks", [[4], [2, 4, 8]])
def test_the_global_moves_by_the_nodes_changes_only(ranks: list[int]) -> None:
    # Each round every node adds 2 * step * I[:, :r] @ A0 to its start: the global grows by one
    # such step per round. Stacking the nodes' whole factors instead would add the global to
    # itself every round (1 -> 2 -> 4 ...).
    one, three = _global_after(1, 0.01, ranks), _global_after(3, 0.01, ranks)
    assert np.linalg.norm(one) > 0
    assert np.linalg.norm(three) < 3.2 * np.linalg.norm(one)
    nothing = _global_after(3, 0.0, ranks)
    np.testing.assert_allclose(nothing, 0.0, atol=1e-6)


def test_flora_tells_nodes_to_continue_and_flora_fresh_to_merge() -> None:
    options = {"federation": Federation(), "options": AggregationOptions()}
    assert STRATEGIES["flora"](**options).instruction(1) == {p.NODE_MODE: p.CONTINUE_MERGED}
    assert STRATEGIES["flora-fresh"](**options).instruction(1) == {p.NODE_MODE: p.MERGE}


def test_flora_aggregates_continuing_nodes_without_a_float64_copy_of_every_module() -> None:
    # 40 continuing rank-4 nodes on 8 modules: the strategy used to stack every node's float64
    # [B_i, -B_i0], [A_i; A_i0] for every module before recompressing (9.3x the factor bytes);
    # now one module's float64 movement stack at a time (1.3x)
    rng = np.random.default_rng(2)
    modules = {f"m{i}": (256, 256) for i in range(8)}
    global_adapter = {m: (rng.normal(size=(8, 256)), rng.normal(size=(256, 8))) for m in modules}
    updates = []
    for node in range(40):
        start = node_start(global_adapter, rank=4, scaling=2.0)
        factors = {m: (a0 + rng.normal(size=a0.shape).astype(np.float32) * 0.1,
                       b0 + rng.normal(size=b0.shape).astype(np.float32) * 0.1, 2.0)
                   for m, (a0, b0) in start.items()}  # fmt: skip
        updates.append(ClientUpdate(node, f"n{node}", factors, 10, 4, {}, 0))
    strategy = FLoRA(federation=Federation(min_nodes=1), options=AggregationOptions(),
                     modules=modules)  # fmt: skip
    factor_bytes = sum(a.nbytes + b.nbytes for u in updates for a, b, _ in u.factors.values())
    tracemalloc.start()
    try:
        strategy.aggregate(1, updates, global_adapter)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak <= 2.0 * factor_bytes

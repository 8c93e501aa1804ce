"""The strategies as Flower strategies: what they tell the nodes, what each node is sent, and
which replies they refuse; with numpy nodes in-process (no torch)."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from common.config import DEFAULT_RUN_CONFIG, SettingsError
from server.run.settings import server_settings
from server.simulation.inprocess import InProcessGrid, node_contexts
from strategies import protocol as p
from strategies.flower.base import LoraStrategy
from strategies.math.public_a import public_lora_a
from strategies.options import AggregationOptions, Federation
from strategies.registry import STRATEGIES

DIM = 256  # in = out: stacking 30 nodes of rank 4 stays below it


def _node_app(*, train_a: frozenset[int] = frozenset()) -> ClientApp:
    """A node that returns random factors of its `lora-rank`, A frozen at the public A when the
    instruction says so (unless the node is in ``train_a``)."""
    app = ClientApp()

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        rank, node = int(context.node_config["lora-rank"]), context.node_id
        config = msg.content.config_records[p.CONFIG]
        rng = np.random.default_rng([node, int(config["server-round"])])
        a = rng.normal(size=(rank, DIM)) / 16
        if config.get(p.FREEZE_A) and node not in train_a:
            a = public_lora_a("m", rank=rank, in_features=DIM, seed=int(config[p.SHARED_A_SEED]))
        arrays = {"m.lora_A.weight": a, "m.lora_B.weight": rng.normal(size=(DIM, rank)) / 16}
        record, layout = p.pack_factors(arrays, modules_digest=config.get(p.MODULES_DIGEST))
        adapter = {**layout, p.RANK: rank, p.ALPHA: 2.0 * rank, p.NODE_NAME: f"n{node}",
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


def _run(
    name: str,
    ranks: list[int],
    *,
    rounds: int = 2,
    cap: int | None = 64,
    train_a: frozenset[int] = frozenset(),
) -> LoraStrategy:
    contexts = node_contexts([{"lora-rank": r} for r in ranks], {})
    grid = InProcessGrid(_node_app(train_a=train_a), contexts)
    strategy = STRATEGIES[name](
        federation=Federation(min_nodes=1, seed=3),
        options=AggregationOptions(max_global_rank=cap),
        modules={"m": (DIM, DIM)},
    )
    train = ConfigRecord({"seed": 0})
    strategy.start(grid, ArrayRecord(), num_rounds=rounds, timeout=10.0, train_config=train)
    return strategy


def _bytes_down(strategy: LoraStrategy, server_round: int) -> list[int]:
    return [entry.bytes_down for entry in strategy.report(server_round).nodes.values()]


def test_flora_downlink_per_node_does_not_grow_with_the_nodes_under_a_cap() -> None:
    few, many = _run("flora", [4] * 3, cap=8), _run("flora", [4] * 30, cap=8)
    assert set(_bytes_down(few, 2)) == set(_bytes_down(many, 2))
    assert len(set(_bytes_down(many, 2))) == 1
    assert many.report(1).global_rank == 8


def test_plain_stacking_without_a_cap_sends_more_to_each_node_as_nodes_join() -> None:
    few, many = _run("flora", [4] * 3, cap=None), _run("flora", [4] * 30, cap=None)
    assert (few.report(1).global_rank, many.report(1).global_rank) == (12, 120)
    assert max(_bytes_down(many, 2)) > 9 * max(_bytes_down(few, 2))


@pytest.mark.parametrize(
    ("name", "mode", "freeze"),
    [("flora", p.CONTINUE_MERGED, False), ("flora-fresh", p.MERGE, False), ("ffa", p.MERGE, True),
     ("fedit", p.CONTINUE, False), ("zeropad", p.CONTINUE, False),
     ("flexlora", p.CONTINUE, False)],
)  # fmt: skip
def test_the_strategy_chooses_what_the_node_does(name: str, mode: str, freeze: bool) -> None:
    strategy = STRATEGIES[name](federation=Federation(seed=3), options=AggregationOptions())
    config = strategy.instruction(1)
    assert config[p.NODE_MODE] == mode
    assert bool(config.get(p.FREEZE_A, False)) == freeze
    assert (p.SHARED_A_SEED in config) == (not name.startswith("flora"))


def test_continuing_nodes_get_only_their_own_rank_on_the_downlink() -> None:
    strategy = _run("zeropad", [4, 8, 16])
    down = {node: entry.bytes_down for node, entry in strategy.report(2).nodes.items()}
    per_component = 2 * DIM * 4  # one row of A and one column of B, fp32
    assert [down[n] // per_component for n in (1001, 1002, 1003)] == [4, 8, 16]
    flex = _run("flexlora", [4, 8, 16])
    assert flex.report(1).global_rank == 28  # the exact mean of the products


def test_fedit_refuses_a_reply_of_another_rank_and_aggregates_the_rest() -> None:
    strategy = _run("fedit", [8, 8, 4], rounds=1)
    refused = [e for e in strategy.report(1).nodes.values() if e.rejected]
    assert len(refused) == 1 and "set the node's `lora-rank` to 8" in str(refused[0].rejected)
    assert strategy.report(1).global_rank == 8


def test_ffa_refuses_a_node_that_trained_a() -> None:
    strategy = _run("ffa", [4, 8], rounds=1, train_a=frozenset({1001}))
    nodes = strategy.report(1).nodes
    assert "public seeded A" in str(nodes[1001].rejected) and nodes[1002].rejected is None
    assert strategy.report(1).global_rank == 8


def test_settings_refuse_what_a_strategy_cannot_do_before_round_1() -> None:
    heterogeneous = r"\(ffa, flexlora, flora, flora-fresh, zeropad\)"
    with pytest.raises(SettingsError, match=r"needs one rank.*" + heterogeneous):
        server_settings({**DEFAULT_RUN_CONFIG, "strategy": "fedit", "lora-ranks": "4,8,16"})
    with pytest.raises(SettingsError, match="`server-lr` is 2, but `strategy` zeropad"):
        server_settings({**DEFAULT_RUN_CONFIG, "strategy": "zeropad", "server-lr": 2.0})
    ok = server_settings({**DEFAULT_RUN_CONFIG, "strategy": "fedit", "lora-ranks": "8"})
    assert ok.strategy == "fedit" and ok.aggregation.server_lr == 1.0

"""The thin Flower layer: node selection, bounded waits, what each node is sent."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord
from flwr.clientapp import ClientApp

from server.simulation.inprocess import InProcessGrid, node_contexts
from strategies import protocol as p
from strategies.flower.base import AggregationOptions, Federation, NotEnoughNodesError
from strategies.flower.flora import FLoRA
from strategies.flower.rounds import sample_nodes


def _grid(nodes: int) -> InProcessGrid:
    return InProcessGrid(ClientApp(), node_contexts([{} for _ in range(nodes)], {}))


def _strategy(**federation: object) -> FLoRA:
    return FLoRA(federation=Federation(**federation), options=AggregationOptions())  # type: ignore[arg-type]


def test_fraction_train_samples_reproducibly_and_evaluates_everyone() -> None:
    grid, strategy = _grid(4), _strategy(min_nodes=1, fraction_train=0.5, seed=3)
    first = [
        m.metadata.dst_node_id
        for m in strategy.configure_train(1, ArrayRecord(), ConfigRecord(), grid)
    ]
    again = [m.metadata.dst_node_id for m in _strategy(min_nodes=1, fraction_train=0.5, seed=3)
             .configure_train(1, ArrayRecord(), ConfigRecord(), grid)]  # fmt: skip
    assert len(first) == 2 and first == again
    evaluated = list(strategy.configure_evaluate(1, ArrayRecord(), ConfigRecord(), grid))
    assert len(evaluated) == 4


def test_instructions_carry_the_global_adapter_in_fp32_and_the_round() -> None:
    grid, strategy = _grid(2), _strategy(min_nodes=2)
    global_adapter = p.to_record(
        {"m.lora_A.weight": np.ones((3, 5)), "m.lora_B.weight": np.ones((4, 3))}, dtype=np.float64
    )
    messages = list(strategy.configure_train(2, global_adapter, ConfigRecord({"seed": 1}), grid))
    arrays = p.from_record(messages[0].content.array_records[p.ARRAYS])
    assert arrays["m.lora_A.weight"].dtype == np.float32
    assert messages[0].content.config_records[p.CONFIG]["server-round"] == 2
    report = strategy.report(2)
    assert all(entry.bytes_down > 0 for entry in report.nodes.values())


def test_waiting_for_nodes_is_bounded_and_says_how_to_fix_it() -> None:
    grid, strategy = _grid(1), _strategy(min_nodes=2, node_wait_s=0.2)
    with pytest.raises(NotEnoughNodesError, match="`min-nodes` is 2"):
        list(strategy.configure_train(1, ArrayRecord(), ConfigRecord(), grid))


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [({"min_nodes": 0}, "min-nodes"), ({"fraction_train": 0.0}, "fraction-train"),
     ({"node_wait_s": -1.0}, "node-wait-s"), ({"fraction_evaluate": 0.0}, "fraction-evaluate"),
     ({"fraction_evaluate": 1.5}, "fraction-evaluate"),
     ({"fraction_evaluate": float("nan")}, "fraction-evaluate")],
)  # fmt: skip
def test_bad_federation_settings_name_the_key(kwargs, field) -> None:
    with pytest.raises(ValueError, match=f"`{field}`"):
        Federation(**kwargs)


def _evaluated(strategy: FLoRA, grid: InProcessGrid, server_round: int) -> list[int]:
    messages = strategy.configure_evaluate(server_round, ArrayRecord(), ConfigRecord(), grid)
    return [m.metadata.dst_node_id for m in messages]


def test_fraction_evaluate_samples_reproducibly_per_round_and_at_least_one_node() -> None:
    grid = _grid(10)
    strategy = _strategy(min_nodes=1, fraction_evaluate=0.3, seed=5)
    first = _evaluated(strategy, grid, 1)
    assert len(first) == 3 and first == sorted(first) and len(set(first)) == 3
    assert first == _evaluated(_strategy(min_nodes=1, fraction_evaluate=0.3, seed=5), grid, 1)
    rounds = {tuple(_evaluated(strategy, grid, r)) for r in range(1, 9)}
    assert len(rounds) > 1  # a fresh sample each round
    assert len(_evaluated(_strategy(min_nodes=1, fraction_evaluate=0.01), grid, 0)) == 1
    assert len(_evaluated(_strategy(min_nodes=5, fraction_evaluate=0.01), grid, 0)) == 1
    assert len(_evaluated(_strategy(min_nodes=1), grid, 0)) == 10  # default 1.0: everyone


def test_a_fraction_of_nodes_is_that_many_nodes_despite_float_products() -> None:
    """0.07 * 100 is 7.000000000000001 in floats: the sample was 8 nodes before."""
    grid = _grid(100)
    strategy = _strategy(min_nodes=1, fraction_train=0.07, fraction_evaluate=0.07)
    assert len(list(strategy.configure_train(1, ArrayRecord(), ConfigRecord(), grid))) == 7
    assert len(_evaluated(strategy, grid, 1)) == 7
    assert sample_nodes(list(range(100)), fraction=0.1, minimum=2, seed=0) == sample_nodes(
        list(range(100)), fraction=0.1, minimum=2, seed=0
    )
    assert len(sample_nodes(list(range(3)), fraction=0.1, minimum=2, seed=0)) == 2
    assert sample_nodes([3, 1, 2], fraction=1.0, minimum=1, seed=0) == [1, 2, 3]

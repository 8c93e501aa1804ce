"""Server momentum (FedAvgM) on FLoRA's factored global adapter: exact against a dense float64
reference, a no-op at β = 0, carried through a checkpoint, refused where it has no meaning."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord, Message

from common.config import SettingsError
from server.simulation.inprocess import InProcessGrid, node_contexts
from strategies import protocol as p
from strategies.flower.flora import FLoRA
from strategies.flower.replies import reply_factors
from strategies.math.factors import split_factor_keys
from strategies.math.flora import node_start
from strategies.math.lowrank import accumulate
from strategies.math.momentum import momentum_step
from strategies.options import AggregationOptions, Federation
from strategies.registry import check_strategy_options
from tests.unit.test_flora_continue import DIM, _node_app


def _dense(adapter: dict) -> dict:
    return {m: b @ a for m, (a, b) in adapter.items()}


def test_momentum_matches_the_dense_float64_reference() -> None:
    rng = np.random.default_rng(0)
    beta, eta = 0.6, 1.5
    glob: dict = {}
    momentum: dict = {}
    ref_g = {"q": np.zeros((10, 12)), "v": np.zeros((12, 10))}
    ref_m = {m: np.zeros_like(x) for m, x in ref_g.items()}
    for rank in (3, 5, 2):  # three rounds of low-rank updates s B A
        update = {"q": (rng.normal(size=(rank, 12)), rng.normal(size=(10, rank)), 0.5),
                  "v": (rng.normal(size=(rank, 10)), rng.normal(size=(12, rank)), 2.0)}  # fmt: skip
        step = momentum_step(glob, momentum, update, beta=beta, eta=eta, max_rank=None)
        glob, momentum = step.accumulated.adapter, step.momentum
        for m, (a, b, s) in update.items():
            ref_m[m] = beta * ref_m[m] + s * b @ a
            ref_g[m] = ref_g[m] + eta * ref_m[m]
        for m in ref_g:
            assert np.linalg.norm(_dense(glob)[m] - ref_g[m]) <= 1e-12 * np.linalg.norm(ref_g[m])
            assert np.linalg.norm(_dense(momentum)[m] - ref_m[m]) <= 1e-12 * np.linalg.norm(
                ref_m[m]
            )


def test_no_momentum_is_the_plain_server_step() -> None:
    rng = np.random.default_rng(1)
    glob = {"q": (rng.normal(size=(4, 12)), rng.normal(size=(10, 4)))}
    update = {"q": (rng.normal(size=(3, 12)), rng.normal(size=(10, 3)), 0.5)}
    step = momentum_step(glob, {}, update, beta=0.0, eta=2.0, max_rank=None)
    plain = accumulate(glob, update, max_rank=None).adapter  # G + D
    np.testing.assert_allclose(_dense(step.accumulated.adapter)["q"],
                               _dense(glob)["q"] + 2.0 * (_dense(plain)["q"] - _dense(glob)["q"]),
                               rtol=1e-12, atol=1e-12)  # fmt: skip
    with pytest.raises(ValueError, match=r"`beta` is 1\.0"):
        momentum_step(glob, {}, update, beta=1.0, eta=1.0, max_rank=None)


def _strategy(beta: float) -> FLoRA:
    return FLoRA(federation=Federation(min_nodes=1),
                 options=AggregationOptions(server_momentum=beta),
                 modules={"m": (DIM, DIM)})  # fmt: skip


def _run(strategy: FLoRA, rounds: int, initial: ArrayRecord | None = None,
         on_reply: Callable[[Message, Message], None] | None = None) -> np.ndarray:  # fmt: skip
    contexts = node_contexts([{"lora-rank": 4}, {"lora-rank": 8}], {})
    grid = InProcessGrid(_node_app(0.01), contexts, on_reply=on_reply)
    strategy.start(grid, initial or ArrayRecord(), num_rounds=rounds, timeout=10.0,
                   train_config=ConfigRecord({"seed": 0}))  # fmt: skip
    a_g, b_g = strategy._global["m"]
    return b_g @ a_g


def test_the_strategy_moves_by_the_momentum_of_the_nodes_changes() -> None:
    # Dense float64 reference from what each node was sent and what it sent back:
    # D_t = sum_i p_i s_i (B_i A_i - B_i0 A_i0), M_t = β M_t-1 + D_t, G_t = G_t-1 + M_t.
    changes: list[np.ndarray] = []

    def record(msg: Message, reply: Message) -> None:
        if msg.metadata.message_type != "train":
            return
        sent, _ = split_factor_keys(p.from_record(msg.content.array_records[p.ARRAYS]))
        shapes = {"m": (DIM, DIM)}  # the flat wire array, its modules named by digest
        pairs, _ = split_factor_keys(reply_factors(reply.content, shapes))
        ((a, b),) = pairs.values()
        a, b, s = np.float64(a), np.float64(b), 2.0  # the node app's alpha = 2 r
        change = s * b @ a
        if sent:
            a0, b0 = node_start(sent, rank=a.shape[0], scaling=s)["m"]
            change -= s * np.float64(b0) @ np.float64(a0)
        changes.append(0.5 * change)  # two nodes, 10 examples each

    beta = 0.5
    glob = _run(_strategy(beta), 3, on_reply=record)
    ref_g, ref_m = np.zeros((DIM, DIM)), np.zeros((DIM, DIM))
    for t in range(3):
        ref_m = beta * ref_m + changes[2 * t] + changes[2 * t + 1]
        ref_g = ref_g + ref_m
    assert np.linalg.norm(ref_g) > 0
    assert np.linalg.norm(glob - ref_g) <= 1e-6 * np.linalg.norm(ref_g)
    assert np.linalg.norm(_run(_strategy(0.0), 3) - ref_g) > 0.1 * np.linalg.norm(ref_g)


def test_momentum_survives_a_checkpoint() -> None:
    straight = _run(_strategy(0.5), 3)
    first = _strategy(0.5)
    _run(first, 2)
    arrays, state = first.state_dict()
    assert any(k.startswith("momentum/") for k in arrays)
    resumed = _strategy(0.5)
    initial = resumed.load_state_dict(arrays, state, completed_round=2)
    np.testing.assert_array_equal(_run(resumed, 1, initial), straight)


def test_momentum_is_refused_where_it_has_no_meaning() -> None:
    assert check_strategy_options("flora-fresh", ranks=(4, 8), server_lr=1.0,
                                  server_momentum=0.5) == []  # fmt: skip
    (problem,) = check_strategy_options("flexlora", ranks=(4, 8), server_lr=1.0,
                                        server_momentum=0.5)  # fmt: skip
    assert "`server-momentum` is 0.5" in problem and "flora" in problem
    with pytest.raises(SettingsError, match=r"`server-momentum` is 1\.0"):
        AggregationOptions(server_momentum=1.0)

"""What a strategy refuses, through ``aggregate_train``/``aggregate_evaluate`` of every strategy:
a poisoned scaling, strategy-specific screens, deterministic tie-breaks, metric records."""

from __future__ import annotations

import itertools
import logging

import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from server.simulation.inprocess import InProcessGrid, node_contexts
from strategies import protocol as p
from strategies.flower.base import LoraStrategy
from strategies.math.public_a import public_lora_a
from strategies.math.validation import ReplyLimits, norm_outliers
from strategies.options import AggregationOptions, Federation
from strategies.registry import STRATEGIES

MODULES = {"m1": (3, 5), "m2": (4, 5)}  # module -> (out, in)
LIMITS = ReplyLimits(max_client_rank=8, max_factor_norm=100.0, max_examples=1000)
NODES = (1001, 1002, 1003)
POISON = 1666


def _factors(node: int, *, rank: int = 2, public_a: bool = False) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(node)
    out = {}
    for m, (o, i) in MODULES.items():
        a = rng.standard_normal((rank, i)) / 4
        if public_a:
            a = public_lora_a(m, rank=rank, in_features=i, seed=0)
        out[f"{m}.lora_A.weight"] = a.astype(np.float32)
        out[f"{m}.lora_B.weight"] = (rng.standard_normal((o, rank)) / 4).astype(np.float32)
    return out


def _poison() -> dict[str, np.ndarray]:
    """A = 1e-30, B = ones: with alpha = 1e30, ‖A‖, ‖B‖ and ‖s·B·A‖ are all small."""
    out = {}
    for m, (o, i) in MODULES.items():
        out[f"{m}.lora_A.weight"] = np.full((2, i), 1e-30, np.float32)
        out[f"{m}.lora_B.weight"] = np.ones((o, 2), np.float32)
    return out


def _reply(
    instruction: Message,
    arrays: dict[str, np.ndarray],
    *,
    rank: int = 2,
    alpha: float = 4.0,
    name: str | None = None,
    metrics: dict[str, object] | None = None,
) -> Message:
    node = instruction.metadata.dst_node_id
    config = instruction.content.config_records[p.CONFIG]
    record, layout = p.pack_factors(arrays, modules_digest=config.get(p.MODULES_DIGEST))
    adapter = {p.RANK: rank, p.ALPHA: alpha, p.NODE_NAME: name or f"node-{node}",
               p.GLOBAL_FINGERPRINT: config[p.GLOBAL_FINGERPRINT], **layout}  # fmt: skip
    content = RecordDict({
        p.ARRAYS: record,
        p.METRICS: MetricRecord(metrics or {p.NUM_EXAMPLES: 10, p.TRAIN_LOSS: 1.0}),  # type: ignore[arg-type]
        p.ADAPTER: ConfigRecord(adapter),  # type: ignore[arg-type]
    })  # fmt: skip
    return Message(content, reply_to=instruction)


def _round(
    name: str, nodes: list[int], *, modules: dict[str, tuple[int, int]] | None = MODULES
) -> tuple[LoraStrategy, dict[int, Message]]:
    strategy = STRATEGIES[name](federation=Federation(min_nodes=1), options=AggregationOptions(),
                                limits=LIMITS, modules=modules)  # fmt: skip
    strategy.salt = "screening"
    contexts = node_contexts([{} for _ in nodes], {})
    grid = InProcessGrid(ClientApp(), dict(zip(nodes, contexts.values(), strict=True)))
    messages = list(strategy.configure_train(1, ArrayRecord(), ConfigRecord(), grid))
    grid.push_messages(messages)
    return strategy, {m.metadata.dst_node_id: m for m in messages}


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_a_reply_whose_scaling_hides_a_huge_update_is_refused_by_every_strategy(
    name: str,
) -> None:
    """Issue 13: A = 1e-30, B = ones, alpha = 1e30 passed every norm check, and FedIT's and
    zero-padding's average of s·B then had a norm of ~1e30."""
    public = name == "ffa"
    strategy, sent = _round(name, [*NODES, POISON])
    replies = [_reply(sent[n], _factors(n, public_a=public)) for n in NODES]
    replies.insert(1, _reply(sent[POISON], _poison(), alpha=1e30))
    arrays, _ = strategy.aggregate_train(1, replies)
    assert arrays is not None
    report = strategy.report(1)
    assert "`max-lora-scaling`" in (report.nodes[POISON].rejected or "")
    assert all(report.nodes[n].rejected is None for n in NODES)
    clean, sent = _round(name, list(NODES))
    expected, _ = clean.aggregate_train(1, [_reply(sent[n], _factors(n, public_a=public))
                                           for n in NODES])  # fmt: skip
    assert expected is not None
    for key in expected:
        np.testing.assert_array_equal(arrays[key].numpy(), expected[key].numpy())
        assert np.linalg.norm(arrays[key].numpy()) < 100


def test_a_refusal_by_a_strategy_screen_keeps_each_nodes_record_and_names_the_refused_node(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Two nodes claim one name; the strategy's own screen (fedit: another rank) refuses the
    second. Before, the refusal wrote the claimed name into its record: two records carried it,
    metrics.jsonl kept one, and the warning named the other node."""
    strategy, sent = _round("fedit", [1001, 1002, 1003])
    replies = [
        _reply(sent[1001], _factors(1001), name="alpha"),
        _reply(sent[1002], _factors(1002), name="beta"),
        _reply(sent[1003], _factors(1003, rank=4), rank=4, alpha=8.0, name="alpha"),
    ]
    with caplog.at_level(logging.INFO, logger="flwr"):  # per-node refusals are logged at INFO
        strategy.aggregate_train(1, replies)
    report = strategy.report(1)
    nodes = report.to_json()["nodes"]
    assert sorted(n["node_id"] for n in nodes.values()) == [1001, 1002, 1003]
    assert nodes["alpha"]["node_id"] == 1001 and nodes["alpha"]["rejected"] is None
    refused = report.nodes[1003]
    assert refused.name != "alpha" and "rank 4" in (refused.rejected or "")
    warning = [r.getMessage() for r in caplog.records if "not used" in r.getMessage()]
    assert warning and all("alpha" not in w and refused.name in w for w in warning)


@pytest.mark.parametrize("order", list(itertools.permutations([1001, 1002])))
def test_fedit_breaks_a_round_1_rank_tie_by_node_name_not_by_arrival(
    order: tuple[int, ...],
) -> None:
    strategy, sent = _round("fedit", [1001, 1002])
    by_node = {
        1001: _reply(sent[1001], _factors(1001), name="b-node"),
        1002: _reply(sent[1002], _factors(1002, rank=4), rank=4, alpha=8.0, name="a-node"),
    }
    strategy.aggregate_train(1, [by_node[n] for n in order])
    report = strategy.report(1)
    assert report.nodes[1002].rejected is None  # a-node comes first in aggregation order
    assert "rank 2" in (report.nodes[1001].rejected or "")
    assert report.global_rank == 4


@pytest.mark.parametrize("order", list(itertools.permutations([1001, 1002])))
def test_a_module_signature_tie_is_broken_by_node_name_not_by_arrival(
    order: tuple[int, ...],
) -> None:
    # no announced module set: the signatures decide (the nodes send their names in full)
    strategy, sent = _round("flora", [1001, 1002], modules=None)
    only_m1 = {k: v for k, v in _factors(1001).items() if k.startswith("m1.")}
    by_node = {
        1001: _reply(sent[1001], _factors(1001), name="b-node"),
        1002: _reply(sent[1002], only_m1, name="a-node"),
    }
    strategy.aggregate_train(1, [by_node[n] for n in order])
    report = strategy.report(1)
    assert report.nodes[1002].rejected is None
    assert "modules differ" in (report.nodes[1001].rejected or "")


@pytest.mark.parametrize(
    ("metrics", "reason"),
    [
        ({p.NUM_EXAMPLES: 10, p.TRAIN_LOSS: float("inf")}, "`train-loss` is inf"),
        ({p.NUM_EXAMPLES: 10, p.TRAIN_LOSS: float("nan")}, "`train-loss` is nan"),
        ({p.NUM_EXAMPLES: 10, "history": [1.0, float("nan")]}, "`history`"),
        ({p.NUM_EXAMPLES: 10, **{f"k{i}": 1.0 for i in range(200)}}, "keys"),
        ({p.NUM_EXAMPLES: 10, "big": [1.0] * 20_000}, "KiB"),
    ],
)
def test_metric_records_must_be_finite_and_small(metrics: dict[str, object], reason: str) -> None:
    strategy, sent = _round("flora", [*NODES, POISON])
    replies = [_reply(sent[n], _factors(n)) for n in NODES]
    replies.append(_reply(sent[POISON], _factors(POISON), metrics=metrics))
    _, metric = strategy.aggregate_train(1, replies)
    assert reason in (strategy.report(1).nodes[POISON].rejected or "")
    assert metric is not None and np.isfinite(metric[p.TRAIN_LOSS])


def _eval_reply(instruction: Message, metrics: dict[str, object]) -> Message:
    content = RecordDict({p.METRICS: MetricRecord(metrics)})  # type: ignore[arg-type]
    return Message(content, reply_to=instruction)


@pytest.mark.parametrize(
    ("metrics", "reason"),
    [
        ({p.EVAL_LOSS: 1e300, p.NUM_EXAMPLES: 5}, "`eval-loss`"),
        ({p.EVAL_LOSS: -1.0, p.NUM_EXAMPLES: 5}, "`eval-loss`"),
        ({p.EVAL_LOSS: 1.0, p.NUM_EXAMPLES: 10**12}, "`num-examples`"),
        ({p.EVAL_LOSS: 1.0, p.NUM_EXAMPLES: 2.5}, "`num-examples`"),
        ({p.EVAL_LOSS: 1.0, p.NUM_EXAMPLES: 5, "x": float("inf")}, "`x` is inf"),
        ({p.EVAL_LOSS: 1.0, p.NUM_EXAMPLES: 5, **{f"k{i}": 1 for i in range(200)}}, "keys"),
    ],
)
def test_evaluation_replies_are_validated_like_train_replies(
    metrics: dict[str, object], reason: str
) -> None:
    strategy, _ = _round("flora", list(NODES))
    grid = InProcessGrid(ClientApp(), node_contexts([{} for _ in NODES], {}))
    evals = list(strategy.configure_evaluate(1, ArrayRecord(), ConfigRecord(), grid))
    grid.push_messages(evals)
    good = [_eval_reply(m, {p.EVAL_LOSS: 2.0, p.NUM_EXAMPLES: 4}) for m in evals[1:]]
    result = strategy.aggregate_evaluate(1, [_eval_reply(evals[0], metrics), *good])
    node = evals[0].metadata.dst_node_id
    assert reason in (strategy.report(1).nodes[node].rejected or "")
    assert result is not None and result[p.EVAL_LOSS] == 2.0 and result[p.NUM_EXAMPLES] == 8


def test_norm_outliers_are_measured_against_the_rounds_median() -> None:
    """Median of (1, 2, 3, 100) is 2.5: with k = 10 only 100 > 25 is refused; off at 0 and
    below 3 updates."""
    reasons = norm_outliers([1.0, 2.0, 3.0, 100.0], ratio=10.0)
    assert reasons[:3] == [None, None, None]
    assert reasons[3] == (
        "update norm 100 is over `max-norm-ratio` = 10 times this round's median 2.5"
    )
    assert norm_outliers([1.0, 2.0, 3.0, 100.0], ratio=0.0) == [None] * 4
    assert norm_outliers([1.0, 100.0], ratio=10.0) == [None, None]


@pytest.mark.parametrize(("ratio", "refused"), [(0.0, False), (10.0, True)])
def test_the_robust_screen_is_off_by_default_and_refuses_a_large_update_when_on(
    ratio: float, refused: bool
) -> None:
    strategy, sent = _round("flora", [*NODES, POISON])
    strategy.limits = ReplyLimits(max_factor_norm=1e4, max_norm_ratio=ratio)
    big = {k: 40 * v if ".lora_B." in k else v for k, v in _factors(POISON).items()}
    replies = [_reply(sent[n], _factors(n)) for n in NODES]
    strategy.aggregate_train(1, [*replies, _reply(sent[POISON], big)])
    reason = strategy.report(1).nodes[POISON].rejected
    assert ("`max-norm-ratio` = 10" in (reason or "")) == refused
    assert all(strategy.report(1).nodes[n].rejected is None for n in NODES)


def test_the_robust_screen_costs_nothing_when_off(monkeypatch: pytest.MonkeyPatch) -> None:
    """Off (the default), no update norm is computed for it: the round's time is unchanged."""
    import strategies.math.validation as v

    def counted(factors: object) -> float:
        calls.append(1)
        return 1.0

    calls: list[int] = []
    monkeypatch.setattr(v, "update_norm", counted)
    strategy, sent = _round("flora", list(NODES))
    strategy.aggregate_train(1, [_reply(sent[n], _factors(n)) for n in NODES])
    assert calls == []
    strategy, sent = _round("flora", list(NODES))
    strategy.limits = ReplyLimits(max_factor_norm=1e4, max_norm_ratio=10.0)
    strategy.aggregate_train(1, [_reply(sent[n], _factors(n)) for n in NODES])
    assert calls == [1, 1, 1]

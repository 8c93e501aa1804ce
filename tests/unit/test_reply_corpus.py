"""A corpus of hostile and broken train replies, through the strategy's ``aggregate_train``.

Every rule of reply validation has a reply here that breaks it. Each is refused with its reason,
the round completes, and the global adapter equals the aggregation of the valid replies alone.
"""

from __future__ import annotations

import random
from collections.abc import Callable

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Error, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from hypothesis import given, settings
from hypothesis import strategies as st

from server.simulation.inprocess import InProcessGrid, node_contexts
from strategies import protocol as p
from strategies.flower.base import AggregationOptions, Federation
from strategies.flower.flora import FLoRA
from strategies.math.validation import ReplyLimits
from tests.wire import hostile_factors, raw_array

MODULES = {"m1": (3, 5), "m2": (4, 5)}  # module -> (out, in)
GOOD = (1001, 1002, 1003)
LIMITS = ReplyLimits(max_client_rank=8, max_factor_norm=100.0, max_examples=1000, max_reply_mb=0.01)


def _factors(node: int, r: int = 2, scale: float = 1.0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(node)
    out = {}
    for m, (o, i) in MODULES.items():
        out[f"{m}.lora_A.weight"] = scale * rng.standard_normal((r, i)).astype(np.float32)
        out[f"{m}.lora_B.weight"] = scale * rng.standard_normal((o, r)).astype(np.float32)
    return out


def _reply(
    instruction: Message,
    arrays: dict | None = None,
    record: ArrayRecord | None = None,
    **over: object,
) -> Message:
    """A reply to ``instruction``; ``over`` replaces adapter/metric fields (None: drop it).

    Good factors are packed as a node packs them (module names as the instruction's digest);
    ``arrays`` are packed as given, names in full (tests/wire.py); ``record`` is sent as is.
    """
    node = instruction.metadata.dst_node_id
    config = instruction.content.config_records[p.CONFIG]
    if arrays is None:
        packed, layout = p.pack_factors(_factors(node), modules_digest=config[p.MODULES_DIGEST])
    else:
        packed, layout = hostile_factors(arrays)  # type: ignore[assignment]
    adapter = {p.RANK: 2, p.ALPHA: 4.0, p.NODE_NAME: f"node-{node}",
               p.GLOBAL_FINGERPRINT: config[p.GLOBAL_FINGERPRINT], **layout}  # fmt: skip
    metrics = {p.NUM_EXAMPLES: 10 + node % 7, p.TRAIN_LOSS: 1.0}
    for key, value in over.items():
        target = metrics if key in (p.NUM_EXAMPLES, p.TRAIN_LOSS) else adapter
        if value is None:
            target.pop(key)
        else:
            target[key] = value  # type: ignore[assignment]
    content = RecordDict({
        p.ARRAYS: packed if record is None else record,
        p.METRICS: MetricRecord(metrics),  # type: ignore[arg-type]
        p.ADAPTER: ConfigRecord(adapter),  # type: ignore[arg-type]
    })  # fmt: skip
    return Message(content, reply_to=instruction)


def _two_arrays(node: int) -> ArrayRecord:
    return ArrayRecord({p.FACTORS: raw_array(_flat(node)), "extra": raw_array(_flat(node))})


def _bytes_short(node: int) -> ArrayRecord:
    """34 floats declared, two bytes fewer sent."""
    data = _flat(node).tobytes()[:-2]
    return ArrayRecord({p.FACTORS: Array(dtype="float32", shape=(34,), stype=p.RAW_STYPE,
                                         data=data)})  # fmt: skip


def _flat(node: int) -> np.ndarray:
    """A good reply's flat factors (m1 then m2, A then B)."""
    packed, _ = p.pack_factors(_factors(node))
    return np.frombuffer(packed[p.FACTORS].data, dtype=np.float32)


Make = Callable[[Message], list[Message]]
# node id -> (how its reply is broken, the reason that must be given)
CORPUS: dict[int, tuple[Make, str]] = {
    2001: (
        lambda i: [
            _reply(
                i,
                {
                    **_factors(1),
                    "m3.lora_A.weight": np.ones((2, 5)),
                    "m3.lora_B.weight": np.ones((3, 2)),
                },
            )
        ],
        "unexpected module",
    ),
    2002: (
        lambda i: [_reply(i, {k: v for k, v in _factors(2).items() if "m2" not in k})],
        "expected module(s) missing",
    ),
    # Layouts that do not describe the flat vector (issue 14: one array per reply).
    2003: (lambda i: [_reply(i, **{p.LAYOUT: [2, 5, 3, 2, 5, 5]})], "declares 36 floats"),
    2004: (lambda i: [_reply(i, record=_two_arrays(4))], "exactly one array `factors`"),
    2005: (
        lambda i: [_reply(i, {**_factors(5), "m1.lora_A.weight": np.ones((2, 6))})],
        "need A (2, 5)",
    ),
    2006: (
        lambda i: [
            _reply(i, {**_factors(6), **{k: v for k, v in _factors(6, r=3).items() if "m2" in k}})
        ],
        "need A (2, 5)",
    ),
    2007: (lambda i: [_reply(i, _factors(7, r=9), **{p.RANK: 9})], "outside 1..8"),
    2008: (
        lambda i: [_reply(i, {k: v.astype(np.int32) for k, v in _factors(8).items()})],
        "must be float32",
    ),
    2009: (
        lambda i: [_reply(i, {**_factors(9), "m1.lora_A.weight": np.full((2, 5), np.nan)})],
        "NaN or inf",
    ),
    2010: (
        lambda i: [_reply(i, {**_factors(10), "m2.lora_B.weight": np.full((4, 2), np.inf)})],
        "NaN or inf",
    ),
    2011: (lambda i: [_reply(i, _factors(11, scale=1e30))], "max-factor-norm"),
    2012: (lambda i: [_reply(i, **{p.ALPHA: 1e30})], "`max-lora-scaling`"),
    2013: (lambda i: [_reply(i, **{p.NUM_EXAMPLES: 10**12})], "`num-examples`"),
    2014: (lambda i: [_reply(i, **{p.NUM_EXAMPLES: 0})], "`num-examples`"),
    2015: (lambda i: [_reply(i, **{p.NUM_EXAMPLES: 2.5})], "`num-examples`"),
    2016: (lambda i: [_reply(i, **{p.NUM_EXAMPLES: None})], "`num-examples`"),
    2017: (
        lambda i: [_reply(i, {**_factors(17), "m1.lora_A.weight": np.ones((2, 5000))})],
        "max-reply-mb",
    ),
    2018: (lambda i: [_reply(i), _reply(i)], "at most one"),
    2019: (lambda i: [_reply(i, **{p.GLOBAL_FINGERPRINT: None})], "global-fingerprint"),
    2020: (lambda i: [_reply(i, **{p.GLOBAL_FINGERPRINT: "0" * 32})], "global-fingerprint"),
    2021: (
        lambda i: [Message(Error(code=500, reason="CUDA out of memory"), reply_to=i)],
        "CUDA out of memory",
    ),
    2022: (lambda i: [], "no reply within `round-timeout-s`"),
    2023: (lambda i: [_reply(_stale(i))], "not an answer"),
    2024: (lambda i: [_reply(i, **{p.RANK: "2"})], "`rank`"),
    2025: (lambda i: [_reply(i, **{p.ALPHA: float("nan")})], "`alpha`"),
    2026: (lambda i: [Message(RecordDict(), reply_to=i)], "lacks"),
    # Issue 13: small ‖A‖, ‖B‖ and ‖s·B·A‖, but FedIT's average of s·B would be ~1e30.
    2027: (lambda i: [_reply(i, _tiny_a(1.0), **{p.ALPHA: 1e30})], "`max-lora-scaling`"),
    # The largest allowed scaling (64 = 128 / 2) on B = 10s: ‖s·B‖ is over the ceiling.
    2028: (lambda i: [_reply(i, _tiny_a(10.0), **{p.ALPHA: 128.0})], "‖s·B‖"),
    2029: (lambda i: [_reply(i, **{p.TRAIN_LOSS: float("inf")})], "`train-loss` is inf"),
    2030: (lambda i: [_reply(i, **{p.TRAIN_LOSS: [1.0] * 20_000})], "KiB"),
    2031: (lambda i: [_reply(i, **{p.MODULES_DIGEST: "0" * 32})], "not the digest of the 2"),
    2032: (lambda i: [_reply(i, **{p.MODULES_DIGEST: None})], "either `modules`"),
    2033: (lambda i: [_reply(i, _factors(33), **{p.MODULES: ["m2", "m1"]})], "must be sorted"),
    2034: (lambda i: [_reply(i, **{p.MODULES: ["m1"], p.MODULES_DIGEST: None})], "names 1 module"),
    2035: (
        lambda i: [_reply(i, record=ArrayRecord({p.FACTORS: raw_array(_flat(35).astype(float))}))],
        "'float64' as 'raw-float32-le'",
    ),
    2036: (
        lambda i: [_reply(i, record=ArrayRecord({p.FACTORS: Array(_flat(36))}))],
        "'float32' as 'numpy.ndarray': must be float32 as 'raw-float32-le'",
    ),
    2037: (lambda i: [_reply(i, **{p.LAYOUT: [2, 5, 3, 2, 5, 0]})], "integer >= 1"),
    2038: (lambda i: [_reply(i, **{p.LAYOUT: [2, 5, 3, 2, 5]})], "[r, in, out] per module"),
    2039: (lambda i: [_reply(i, **{p.LAYOUT: None})], "`layout` is None"),
    2040: (
        lambda i: [_reply(i, record=ArrayRecord({p.FACTORS: raw_array(_flat(40)[:-1])}))],
        "declares 34 floats but `factors` holds 33",
    ),
    2041: (lambda i: [_reply(i, record=_bytes_short(41))], "4 bytes per float"),
}


def _tiny_a(b_value: float) -> dict[str, np.ndarray]:
    """A = 1e-30 and B = ``b_value`` everywhere: the product is ~0 whatever the scaling."""
    out = {}
    for m, (o, i) in MODULES.items():
        out[f"{m}.lora_A.weight"] = np.full((2, i), 1e-30, np.float32)
        out[f"{m}.lora_B.weight"] = np.full((o, 2), b_value, np.float32)
    return out


def _stale(instruction: Message) -> Message:
    """The same node's instruction from an earlier round (a reply that arrives late)."""
    old = Message(instruction.content, dst_node_id=instruction.metadata.dst_node_id,
                  message_type="train", group_id="0")  # fmt: skip
    old.metadata.__dict__["_message_id"] = "earlier-round"
    return old


def _round(nodes: list[int], salt: str) -> tuple[FLoRA, dict[int, Message]]:
    """A strategy that has sent this round's train instructions to ``nodes``."""
    strategy = FLoRA(
        federation=Federation(min_nodes=1), options=AggregationOptions(), limits=LIMITS,
        modules=MODULES,
    )  # fmt: skip
    strategy.salt = salt
    contexts = node_contexts([{} for _ in nodes], {})
    grid = InProcessGrid(ClientApp(), {n: c for n, c in zip(nodes, contexts.values(), strict=True)})
    messages = list(strategy.configure_train(1, ArrayRecord(), ConfigRecord(), grid))
    grid.push_messages(messages)  # assigns message ids, as Flower's grids do
    return strategy, {m.metadata.dst_node_id: m for m in messages}


def _aggregate(hostile: list[int], rnd: random.Random | None = None) -> tuple[FLoRA, ArrayRecord]:
    """Good replies in node order, each hostile node's replies inserted at random places."""
    strategy, sent = _round([*GOOD, *hostile], salt="corpus")
    replies = [_reply(sent[n]) for n in GOOD]
    for node in hostile:
        for reply in CORPUS[node][0](sent[node]):
            replies.insert(rnd.randint(0, len(replies)) if rnd else len(replies), reply)
    arrays, _ = strategy.aggregate_train(1, replies)
    assert arrays is not None
    return strategy, arrays


def _good_only() -> ArrayRecord:
    return _aggregate([])[1]


def test_every_broken_reply_is_refused_with_its_reason_and_the_round_completes() -> None:
    strategy, arrays = _aggregate(list(CORPUS))
    report = strategy.report(1)
    assert report.aggregated
    for node, (_, reason) in CORPUS.items():
        assert reason in (report.nodes[node].rejected or ""), (node, report.nodes[node].rejected)
    assert all(report.nodes[n].rejected is None for n in GOOD)
    json_nodes = report.to_json()["nodes"]
    assert sum(1 for n in json_nodes.values() if n["rejected"]) == len(CORPUS)
    good = _good_only()
    for key in good:
        np.testing.assert_array_equal(arrays[key].numpy(), good[key].numpy())


@settings(max_examples=15, deadline=None)
@given(st.lists(st.sampled_from(sorted(CORPUS)), unique=True, max_size=8), st.randoms())
def test_refused_replies_never_change_the_result(hostile: list[int], rnd: random.Random) -> None:
    """Law: any subset of the corpus, anywhere among the good replies, changes nothing (bitwise:
    the good replies keep their order)."""
    _, arrays = _aggregate(hostile, rnd)
    good = _good_only()
    for key in good:
        np.testing.assert_array_equal(arrays[key].numpy(), good[key].numpy())


def test_a_foreign_runs_fingerprint_is_refused() -> None:
    strategy, sent = _round(list(GOOD), salt="ours")
    _, foreign = _round(list(GOOD), salt="theirs")
    theirs = foreign[1003].content.config_records[p.CONFIG][p.GLOBAL_FINGERPRINT]
    replies = [_reply(sent[n]) for n in (1001, 1002)]
    replies.append(_reply(sent[1003], **{p.GLOBAL_FINGERPRINT: theirs}))
    strategy.aggregate_train(1, replies)
    assert "global-fingerprint" in (strategy.report(1).nodes[1003].rejected or "")


@pytest.mark.parametrize("value", [[5], -3, float("inf")])
def test_odd_example_counts_are_refused(value: object) -> None:
    strategy, sent = _round([*GOOD, 2100], salt="s")
    replies = [_reply(sent[n]) for n in GOOD] + [_reply(sent[2100], **{p.NUM_EXAMPLES: value})]
    strategy.aggregate_train(1, replies)
    assert "`num-examples`" in (strategy.report(1).nodes[2100].rejected or "")


class _AnsweringGrid(InProcessGrid):
    """Answers every re-sent instruction with a good reply (the retry of a short round)."""

    def send_and_receive(self, messages, *, timeout=None):  # type: ignore[no-untyped-def]
        messages = list(messages)
        self.push_messages(messages)
        return [_reply(m) for m in messages]


def test_a_short_round_is_retried_and_then_aggregated() -> None:
    from strategies.flower.rounds import RoundPolicy

    strategy = FLoRA(federation=Federation(min_nodes=1), options=AggregationOptions(),
                     limits=LIMITS, modules=MODULES, policy=RoundPolicy(min_replies=3))  # fmt: skip
    grid = _AnsweringGrid(ClientApp(), node_contexts([{}, {}, {}], {}))
    sent = list(strategy.configure_train(1, ArrayRecord(), ConfigRecord(), grid))
    grid.push_messages(sent)
    arrays, _ = strategy.aggregate_train(1, [_reply(sent[0]), _reply(sent[0])])
    report = strategy.report(1)
    assert arrays is not None and report.aggregated and report.extra["retries"] == 1
    assert all(entry.rejected is None and entry.rank == 2 for entry in report.nodes.values())


def test_a_node_claiming_another_nodes_name_cannot_overwrite_its_record() -> None:
    strategy, sent = _round([*GOOD, 2200], salt="s")
    replies = [_reply(sent[n]) for n in GOOD]
    replies.append(_reply(sent[2200], **{p.NODE_NAME: "node-1001", p.NUM_EXAMPLES: 0}))
    strategy.aggregate_train(1, replies)
    nodes = strategy.report(1).to_json()["nodes"].values()
    assert sorted(n["node_id"] for n in nodes) == [*GOOD, 2200]  # one record each, none lost
    assert [n["node_id"] for n in nodes if n["rejected"]] == [2200]


@settings(max_examples=10, deadline=None)
@given(st.permutations(GOOD))
def test_the_result_does_not_depend_on_the_order_replies_arrive(order: list[int]) -> None:
    """Bitwise: replies are aggregated in node-name order, whatever order the network gives."""
    strategy, sent = _round(list(GOOD), salt="order")
    arrays, _ = strategy.aggregate_train(1, [_reply(sent[n]) for n in order])
    assert arrays is not None
    good = _good_only()
    for key in good:
        np.testing.assert_array_equal(arrays[key].numpy(), good[key].numpy())


def test_the_superlinks_own_error_replies_are_charged_to_the_addressee() -> None:
    """Flower answers for a node that stopped heart-beating (src = the SuperLink, not the node):
    the refusal is recorded against that node, in training and in evaluation."""
    strategy, sent = _round(list(GOOD), salt="unavailable")
    lost = Message(Error(code=5, reason="Node Unavailable"), reply_to=sent[1003])
    lost.metadata.__dict__["_src_node_id"] = 1  # as the SuperLink sends it
    arrays, _ = strategy.aggregate_train(1, [_reply(sent[1001]), _reply(sent[1002]), lost])
    assert arrays is not None
    report = strategy.report(1)
    assert "Node Unavailable" in (report.nodes[1003].rejected or "")
    assert 1 not in report.nodes

    grid = InProcessGrid(ClientApp(), node_contexts([{} for _ in GOOD], {}))
    evals = list(strategy.configure_evaluate(1, arrays, ConfigRecord(), grid))
    grid.push_messages(evals)
    gone = Message(Error(code=5, reason="Node Unavailable"), reply_to=evals[0])
    gone.metadata.__dict__["_src_node_id"] = 1
    strategy.aggregate_evaluate(1, [gone])
    assert "Node Unavailable" in (strategy.report(1).nodes[evals[0].metadata.dst_node_id].rejected
                                  or "")  # fmt: skip
    assert 1 not in strategy.report(1).nodes

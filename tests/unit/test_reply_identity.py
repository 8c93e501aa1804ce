"""Deployment: a reply's node name must be the name its Flower node's key was enrolled as
(the operator's enrolled-nodes.json); simulation keeps taking names as the nodes report them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from server.operator.enrollment.registry import Registry
from server.run.identities import EnrolledNodes
from server.simulation.inprocess import InProcessGrid, node_contexts
from strategies import protocol as p
from tests.unit.test_reply_screening import _factors, _reply, _round

ENROLLED = {1001: "hospital-a", 1002: "bank-b", 1003: "clinic-c"}
STRANGER = 1666  # a key registered with Flower outside fedlora's enrollment


def _train_round(enrolled: dict[int, str] | None) -> tuple[ArrayRecord | None, dict]:
    strategy, sent = _round("flora", [*ENROLLED, STRANGER])
    strategy.enrolled = None if enrolled is None else enrolled.get
    replies = [
        _reply(sent[1001], _factors(1001), name="hospital-a"),
        _reply(sent[1002], _factors(1002), name="bank-b"),
        _reply(sent[1003], _factors(1003), name="hospital-a"),  # clinic-c claims another's name
        _reply(sent[STRANGER], _factors(STRANGER), name="clinic-d"),
    ]
    arrays, _ = strategy.aggregate_train(1, replies)
    return arrays, strategy.report(1).to_json()["nodes"]


def test_a_reply_under_another_nodes_name_is_refused_in_deployment() -> None:
    arrays, nodes = _train_round(ENROLLED)
    assert sorted(nodes) == ["bank-b", "clinic-c", "hospital-a", f"node-{STRANGER}"]
    assert nodes["hospital-a"]["node_id"] == 1001 and nodes["hospital-a"]["rejected"] is None
    assert nodes["bank-b"]["rejected"] is None
    assert nodes["clinic-c"]["node_id"] == 1003
    assert nodes["clinic-c"]["rejected"] == (
        "the reply names its node 'hospital-a', but Flower node 1003 was enrolled as 'clinic-c': "
        "a node may only report the name the operator invited it as"
    )
    assert "is not enrolled with fedlora" in nodes[f"node-{STRANGER}"]["rejected"]
    honest, sent = _round("flora", [1001, 1002])
    replies = [_reply(sent[1001], _factors(1001), name="hospital-a"),
               _reply(sent[1002], _factors(1002), name="bank-b")]  # fmt: skip
    expected, _ = honest.aggregate_train(1, replies)
    assert arrays is not None and expected is not None
    for key in expected:
        np.testing.assert_array_equal(arrays[key].numpy(), expected[key].numpy())


def test_simulation_keeps_taking_the_reported_names() -> None:
    _, nodes = _train_round(None)
    assert all(n["rejected"] is None for n in nodes.values())
    assert nodes["hospital-a"]["node_id"] == 1001  # the first claimant keeps the name
    assert {n["node_id"] for n in nodes.values()} == {*ENROLLED, STRANGER}


def test_an_evaluation_under_another_nodes_name_is_refused() -> None:
    strategy, _ = _round("flora", list(ENROLLED))
    strategy.enrolled = ENROLLED.get
    grid = InProcessGrid(ClientApp(), dict(zip(ENROLLED, node_contexts([{}] * 3, {}).values(),
                                               strict=True)))  # fmt: skip
    evals = list(strategy.configure_evaluate(1, ArrayRecord(), ConfigRecord(), grid))
    grid.push_messages(evals)

    def reply(instruction: Message, name: str) -> Message:
        content = RecordDict({
            p.METRICS: MetricRecord({p.EVAL_LOSS: 1.0, p.NUM_EXAMPLES: 5}),
            p.ADAPTER: ConfigRecord({p.NODE_NAME: name}),
        })  # fmt: skip
        return Message(content, reply_to=instruction)

    by_node = {m.metadata.dst_node_id: m for m in evals}
    metric = strategy.aggregate_evaluate(1, [reply(by_node[1001], "hospital-a"),
                                             reply(by_node[1002], "bank-b"),
                                             reply(by_node[1003], "bank-b")])  # fmt: skip
    nodes = strategy.report(1).to_json()["nodes"]
    assert nodes["hospital-a"]["rejected"] is None and nodes["bank-b"]["node_id"] == 1002
    assert "enrolled as 'clinic-c'" in nodes["clinic-c"]["rejected"]
    assert metric is not None and metric[p.NUM_EXAMPLES] == 10


def test_the_registry_keeps_the_map_the_server_app_reads(tmp_path: Path) -> None:
    registry = Registry(tmp_path / "enrollment.db")
    names = EnrolledNodes(registry.names_path)
    assert names(7) is None and registry.names_path.stat().st_mode & 0o777 == 0o600
    for node_id, name in ((7, "hospital-a"), (9, "bank-b")):
        registry.add_invitation(token_id=name, name=name, secret="s", ttl_s=60)
        registry.enroll(token_id=name, secret="s", public_key=f"key-{name}", fingerprint="f",
                        peer="test", register=lambda _n, _k, i=node_id: i)  # fmt: skip
    assert (names(7), names(9)) == ("hospital-a", "bank-b")  # re-read: the file changed
    registry.mark_revoked("bank-b")
    assert (names(7), names(9)) == ("hospital-a", None)
    assert registry.names_path.stat().st_mode & 0o777 == 0o600

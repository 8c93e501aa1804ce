"""A reply holds only the records a fedlora node sends (strategies/protocol.py REPLY_RECORDS):
an extra array record would escape `max-reply-mb` (it counts the `arrays` record), extra metric
or config records would reach nothing that bounds them; each is refused, named, before anything
in the reply is read."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from strategies import protocol as p
from strategies.flower.replies import (
    ClientUpdate,
    EvalResult,
    Rejected,
    parse_eval_reply,
    parse_train_reply,
)
from tests.unit.test_reply_config_cap import _message

TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 1
MODULES = ["base_model.model.model.layers.0.self_attn.q_proj"]


def _with(msg: Message, kind: str, name: str) -> Message:
    content = msg.content
    if kind == "array":
        content.array_records[name] = ArrayRecord({"x": Array(np.zeros(4, np.float32))})
    elif kind == "metric":
        content.metric_records[name] = MetricRecord({"x": 1.0})
    else:
        content.config_records[name] = ConfigRecord({"x": "y"})
    return msg


def test_an_honest_reply_with_every_record_a_node_sends_is_used() -> None:
    msg = _message(MODULES, privacy={p.DP_MODE: "none"})
    assert set(msg.content.config_records) == {p.ADAPTER, p.PRIVACY}
    assert isinstance(parse_train_reply(msg), ClientUpdate)


@pytest.mark.parametrize("kind", ["array", "metric", "config"])
def test_a_train_reply_with_a_record_no_node_sends_is_refused_and_named(kind: str) -> None:
    got = parse_train_reply(_with(_message(MODULES), kind, "smuggled"))
    assert isinstance(got, Rejected)
    assert f"{kind} record `smuggled`" in got.reason and "was not used" in got.reason


def test_an_evaluate_reply_is_held_to_the_same_records() -> None:
    def reply() -> Message:
        instruction = Message(RecordDict(), dst_node_id=4, message_type="evaluate", group_id="1")
        instruction.metadata.__dict__["_message_id"] = "m5"
        content = RecordDict({p.METRICS: MetricRecord({p.EVAL_LOSS: 2.5, p.NUM_EXAMPLES: 4}),
                              p.ADAPTER: ConfigRecord({p.NODE_NAME: "hospital-a"})})  # fmt: skip
        return Message(content, reply_to=instruction)

    assert isinstance(parse_eval_reply(reply()), EvalResult)
    got = parse_eval_reply(_with(reply(), "array", "weights"))
    assert isinstance(got, Rejected) and "array record `weights`" in got.reason


def test_many_extra_records_are_named_three_and_counted() -> None:
    msg = _message(MODULES)
    for i in range(5):
        _with(msg, "metric", f"m{i}")
    got = parse_train_reply(msg)
    assert isinstance(got, Rejected)
    assert "`m0`, metric record `m1`, metric record `m2` and 2 more" in got.reason

"""The node log's line per message: round, kind, seconds per phase (client/node/records.py)."""

from __future__ import annotations

import pytest
from flwr.app import Error, Message, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from client.model import phases
from client.node.records import MessageRecord, timed_message
from strategies import protocol as p


@pytest.fixture(autouse=True)
def _task() -> None:
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 1  # as in a task


def _instruction(kind: str, server_round: int) -> Message:
    return Message(RecordDict(), dst_node_id=1, message_type=kind, group_id=str(server_round))


def _reply_to(msg: Message, train_seconds: float | None = None) -> Message:
    metrics = {p.NUM_EXAMPLES: 8} | ({} if train_seconds is None else
                                      {p.TRAIN_SECONDS: train_seconds})  # fmt: skip
    return Message(RecordDict({p.METRICS: MetricRecord(metrics)}), reply_to=msg)


def test_a_train_message_splits_into_load_apply_train_and_the_rest() -> None:
    msg = _instruction("train", 2)
    spent = {"load": 0.5, "apply": 0.25}
    record = MessageRecord(round="2", kind="train", seconds=3.0, spent=spent,
                           reply=_reply_to(msg, 2.0))  # fmt: skip
    assert record.split() == {"load": 0.5, "apply": 0.25, "train": 2.0, "other": 0.25}
    assert record.line() == (
        "[fedlora] round 2 train: 3.00 s (load 0.50, apply 0.25, train 2.00, other 0.25)"
    )


def test_an_evaluate_message_counts_what_is_not_load_or_apply_as_eval() -> None:
    msg = _instruction("evaluate", 1)
    record = MessageRecord(round="1", kind="evaluate", seconds=1.5, spent={"load": 1.0},
                           reply=_reply_to(msg))  # fmt: skip
    assert record.split() == {"load": 1.0, "apply": 0.0, "eval": 0.5, "other": 0.0}


def test_an_error_reply_is_marked_and_its_time_is_other() -> None:
    msg = _instruction("train", 3)
    error = Message(Error(code=403, reason="budget spent"), reply_to=msg)
    record = MessageRecord(round="3", kind="train", seconds=0.5, spent={}, reply=error)
    assert record.split() == {"load": 0.0, "apply": 0.0, "other": 0.5}
    assert record.line().endswith("(error reply)")


def test_timed_message_reads_the_phases_of_this_message_only() -> None:
    with phases.phase("load"):
        pass  # left over from before the message: not counted
    msg = _instruction("train", 4)
    with timed_message(msg) as record:
        with phases.phase("apply"):
            pass
        record.reply = _reply_to(msg, 0.0)
    assert record.round == "4" and record.kind == "train"
    assert set(record.spent) == {"apply"} and record.seconds >= record.spent["apply"]
    assert phases.take() == {}

"""What the server records of a node's privacy figures, and what the summary says."""

from __future__ import annotations

from flwr.app import ConfigRecord, Error, Message, MetricRecord, RecordDict

from server.run.privacy_summary import decline_notes, epsilon_column, epsilon_note
from server.run.runlog import RunLog
from strategies import protocol as p
from strategies.flower.privacy_report import read_privacy, record_privacy
from strategies.flower.report import RoundReport


def _reply(metrics: dict[str, float], privacy: dict[str, object], node: int = 5) -> Message:
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 1
    instruction = Message(RecordDict(), dst_node_id=node, message_type="train", group_id="1")
    instruction.metadata.__dict__["_message_id"] = "m1"
    content = RecordDict(
        {
            p.METRICS: MetricRecord(metrics),
            p.PRIVACY: ConfigRecord(privacy),  # type: ignore[arg-type]
            p.ADAPTER: ConfigRecord({p.NODE_NAME: "bank"}),
        }
    )
    reply = Message(content, reply_to=instruction)
    reply.metadata.__dict__["_src_node_id"] = node
    return reply


def test_a_reply_s_ledger_figures_land_in_the_node_s_entry() -> None:
    reply = _reply(
        {p.DP_EPSILON_RECORD: 3.5, p.DP_DELTA: 1e-5, p.DP_NOISE_MULTIPLIER: 1.1,
         p.DP_SAMPLE_RATE: 0.03, p.DP_STEPS: 40, p.NUM_EXAMPLES: 10},
        {p.DP_MODE: "dp-sgd", p.DP_HISTORY: [1.0, 0.03, 20.0, 1.1, 0.03, 20.0]},
    )  # fmt: skip
    fields = read_privacy(reply)
    assert fields["dp_mode"] == "dp-sgd" and fields["dp_steps"] == 40
    assert fields["dp_history"] == [[1.0, 0.03, 20], [1.1, 0.03, 20]]
    report = RoundReport(round=1)
    record_privacy(report, [reply], lambda node, name: name or f"node-{node}")
    entry = next(iter(report.nodes.values()))
    assert (
        entry.name == "bank"
        and entry.dp_epsilon_record == 3.5
        and entry.dp_epsilon_institution is None
        and entry.dp_noise_multiplier == 1.1
    )


def test_error_replies_and_plain_replies_carry_no_privacy_figures() -> None:
    instruction = Message(RecordDict(), dst_node_id=5, message_type="train", group_id="1")
    instruction.metadata.__dict__["_message_id"] = "m2"
    assert read_privacy(Message(Error(code=403, reason="budget"), reply_to=instruction)) == {}
    assert read_privacy(_reply({}, {p.DP_MODE: "none"})) == {"dp_mode": "none"}


def _records() -> list[dict[str, object]]:
    dp = {"dp_mode": "dp-sgd", "dp_delta": 1e-5}
    return [
        {"round": 0, "nodes": {"a": {"eval_loss": 4.0}, "b": {"eval_loss": 4.2}}},
        {"round": 1, "nodes": {"a": {"rank": 4, "dp_epsilon_record": 2.0, **dp},
                               "b": {"rank": 8, "dp_epsilon_record": 2.5, **dp}}},
        {"round": 2, "nodes": {"a": {"rank": 4, "dp_epsilon_record": 3.0, **dp},
                               "b": {"rejected": "node error 403: privacy budget: ..."}}},
    ]  # fmt: skip


def test_summary_shows_each_node_s_epsilon_and_why_a_node_stopped(tmp_path) -> None:  # type: ignore[no-untyped-def]
    records = _records()
    assert epsilon_column(records) == {
        "a": "3.000 per record, — per institution (δ=1e-05)",
        "b": "2.500 per record, — per institution (δ=1e-05)",
    }
    assert decline_notes(records) == [
        "b: not used since round 2: node error 403: privacy budget: ..."
    ]
    log = RunLog(tmp_path, 2, echo=lambda _: None)
    for record in records:
        log.write(record)  # type: ignore[arg-type]
    table = log.summary_table()
    assert (
        "ε spent" in table
        and "3.000 per record, — per institution" in table
        and "privacy budget" in table
    )


def test_no_epsilon_column_without_privacy() -> None:
    records = [{"round": 1, "nodes": {"a": {"rank": 4, "dp_mode": "none"}}}]
    assert epsilon_column(records) == {}


def test_a_data_set_with_both_guarantees_shows_two_numbers_with_their_units() -> None:
    entry = {"dp_mode": "dp-lora", "dp_delta": 1e-5, "dp_epsilon_record": 1.5,
             "dp_epsilon_institution": 1.5}  # fmt: skip
    assert epsilon_column([{"round": 1, "nodes": {"a": entry}}]) == {
        "a": "1.500 per record, 1.500 per institution (δ=1e-05)"
    }
    assert epsilon_note({p.DP_EPSILON_RECORD: 2.0}) == ", ε 2.000 per record"
    both = {p.DP_EPSILON_RECORD: 2.0, p.DP_EPSILON_INSTITUTION: 1.0}
    assert epsilon_note(both) == ", ε 2.000 per record, 1.000 per institution"
    assert epsilon_note({p.TRAIN_LOSS: 2.0}) == ""


def test_replies_without_losses_leave_train_loss_empty_in_the_record(tmp_path) -> None:  # type: ignore[no-untyped-def]
    log = RunLog(tmp_path, 1, echo=lambda _: None)
    record = {"round": 1, "nodes": {"a": {"rank": 4, "train_loss": None, "eval_loss": None,
              "dp_mode": "dp-sgd", "dp_epsilon_record": 1.0}}}  # fmt: skip
    log.write(record)
    assert "round 1/1" in log.progress_line(log.records[0])
    assert "1.000 per record" in log.summary_table()

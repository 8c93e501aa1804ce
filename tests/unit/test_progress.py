"""The per-round progress lines (server/run/progress.py) and the simulation's live bar and plain
lines (server/simulation/progress.py): one line a round at any node count."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest
from flwr.app import ConfigRecord, Error, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from rich.console import Console

from server.run.progress import (
    LINE_CHARS,
    bytes_text,
    loss_summary,
    refusal_lines,
    round_counts,
    round_line,
    seconds_text,
)
from server.run.runlog import METRICS_FILE, SUMMARY_DECLINES, SUMMARY_NODES, RunLog
from server.simulation.inprocess import InProcessGrid, node_contexts
from server.simulation.progress import PER_NODE_LINES, LiveProgress, PlainProgress
from strategies import protocol as p

REASON = "privacy budget: this round would spend ε 9.1 of the budget 8.0 on this data set; " * 3


def record(nodes: int, *, sampled: int, refused: int = 2, server_round: int = 3) -> dict[str, Any]:
    """A heavy round: every node evaluated, ``sampled`` trained, ``refused`` of them refused."""
    entries: dict[str, Any] = {}
    for i in range(nodes):
        trained, bad = i < sampled - refused, sampled - refused <= i < sampled
        entries[f"cardiology-{i + 1}"] = {
            "node_id": 1001 + i,
            "eval_loss": 2.0 + i / nodes,
            "rank": 16 if trained else None,
            "rejected": REASON if bad else None,
        }
    return {"round": server_round, "nodes": entries, "sampled": sampled, "global_rank": 64,
            "recompress_error": 1.234e-3, "bytes_up": 812_345_678, "round_s": 123.4}  # fmt: skip


@pytest.mark.parametrize(
    ("nodes", "sampled", "server_round", "num_rounds"),
    [(3, 3, 3, 3), (30, 30, 10, 10), (1000, 100, 100, 100), (1000, 1000, 100, 100)],
)
def test_one_line_a_round_within_the_bound_at_any_node_count(
    nodes: int, sampled: int, server_round: int, num_rounds: int
) -> None:
    line = round_line(record(nodes, sampled=sampled, server_round=server_round),
                      num_rounds=num_rounds)  # fmt: skip
    assert "\n" not in line and len(line) <= LINE_CHARS, (len(line), line)
    assert line.startswith(f"[fedlora] round {server_round}/{num_rounds} | ")
    assert f"{sampled} sampled, {sampled - 2} used, 2 refused" in line
    assert "rank 64, trunc err 1.2e-03" in line and "up 812 MB" in line and line.endswith("123 s")
    base = round_line(record(nodes, sampled=sampled, server_round=0), num_rounds=num_rounds)
    assert base.startswith(f"[fedlora] round 0/{num_rounds} | {nodes} evaluated, 2 refused | ")
    assert len(base) <= LINE_CHARS


def test_an_estimated_truncation_error_shows_its_standard_error_where_it_fits() -> None:
    # the range route's error is an estimate: "≈x ± sd"; a certified one stays plain; the
    # line keeps its bound, so a full line drops the ± sd (then the ≈) before anything else
    small = {**record(3, sampled=3, server_round=3), "recompress_error_sd": 4.1e-6}
    line = round_line(small, num_rounds=3)
    assert "rank 64, trunc err ≈1.2e-03 ± 4e-06 | up 812 MB | 123 s" in line
    tight = round_line({**small, **record(30, sampled=30, server_round=10)}, num_rounds=10)
    assert len(tight) <= LINE_CHARS and "trunc err ≈1.2e-03 | " in tight
    assert "±" not in round_line(record(3, sampled=3), num_rounds=3)
    full = {**record(1000, sampled=1000, server_round=100), "recompress_error_sd": 4.1e-6}
    line = round_line(full, num_rounds=100)  # 150 characters without the sd: no room
    assert len(line) <= LINE_CHARS and "trunc err 1.2e-03 | up 812 MB" in line
    roomy = round_line({**full, "sampled": 100}, num_rounds=100)
    assert len(roomy) <= LINE_CHARS and "trunc err ≈1.2e-03" in roomy


def test_far_beyond_a_thousand_nodes_the_line_stays_near_the_bound() -> None:
    heavy = record(9999, sampled=9999)
    heavy["nodes"]["cardiology-1"]["eval_loss"] = 12.5  # a two-digit loss
    assert len(round_line({**heavy, "round": 999, "round_s": 5000.0}, num_rounds=999)) <= 155


def test_eval_loss_minimum_median_maximum_by_hand() -> None:
    assert loss_summary([3.0, 1.0, 2.0, 10.0]) == "min/med/max 1.000/2.500/10.00"  # (2+3)/2
    assert loss_summary([2.5, 4.0, 1.5]) == "min/med/max 1.500/2.500/4.000"
    assert loss_summary([]) == "-"
    rec = {"round": 1, "sampled": 3, "nodes": {
        "a": {"eval_loss": 2.0, "rank": 4}, "b": {"eval_loss": float("nan"), "rank": 8},
        "c": {"eval_loss": None, "rejected": "late"}, "d": {"eval_loss": 4.0}}}  # fmt: skip
    counts = round_counts(rec)
    assert (counts.sampled, counts.used, counts.refused) == (3, 2, 1)
    assert sorted(counts.eval_losses) == [2.0, 4.0]  # NaN and None left out
    assert "eval loss min/med/max 2.000/3.000/4.000" in round_line(rec, num_rounds=1)
    del rec["sampled"]  # a record written before `sampled` was: the nodes that trained
    assert round_counts(rec).sampled == 3


def test_units_of_bytes_and_seconds() -> None:
    assert [bytes_text(n) for n in (0, 999, 1000, 45_600, 999_499, 999_500, 3.2e12)] == [
        "0 B", "999 B", "1.00 kB", "45.6 kB", "999 kB", "1.00 MB", "3200 GB"]  # fmt: skip
    assert [seconds_text(s) for s in (0.04, 4.21, 9.96, 123.4, 1020.0)] == [
        "0.0 s", "4.2 s", "10 s", "123 s", "17 min"]  # fmt: skip


def test_refusals_are_listed_by_node_then_the_rest_is_counted() -> None:
    lines = refusal_lines(record(30, sampled=10, refused=5))
    assert len(lines) == 4 and all(len(line) <= LINE_CHARS for line in lines)
    # refused: cardiology-6 ... -10, listed in name order (metrics.jsonl's order)
    assert lines[0].startswith("[fedlora]   refused cardiology-10: privacy budget: ")
    assert lines[0].endswith("…")  # the long reason is cut at the bound
    assert lines[-1] == "[fedlora]   … and 2 more, see metrics.jsonl"
    assert len(refusal_lines(record(30, sampled=10, refused=3))) == 3
    assert refusal_lines(record(30, sampled=10, refused=0)) == []


def test_runlog_prints_a_few_lines_and_keeps_every_node_in_metrics(tmp_path: Path) -> None:
    printed: list[str] = []
    log = RunLog(tmp_path, 3, echo=printed.append)
    log.write(record(1000, sampled=100, refused=7, server_round=1))
    assert len(printed) == 1 + 3 + 1 and printed[-1].endswith("4 more, see metrics.jsonl")
    assert all(len(line) <= LINE_CHARS for line in printed)
    saved = json.loads((tmp_path / METRICS_FILE).read_text())
    assert len(saved["nodes"]) == 1000 and saved["sampled"] == 100
    assert saved["round_s"] >= 0 and saved["elapsed_s"] >= saved["round_s"]
    assert sum(1 for e in saved["nodes"].values() if e["rejected"]) == 7


@pytest.fixture(autouse=True)
def _server_identity() -> None:
    """Messages need the sender's identity, which a grid sets (as Flower's runtime does)."""
    InProcessGrid(ClientApp(), node_contexts([{}], {}))


def _instruction(node_id: int, kind: str = "train", server_round: int = 2) -> Message:
    content = RecordDict({p.CONFIG: ConfigRecord()})
    return Message(content, node_id, kind, group_id=str(server_round))


def _reply(msg: Message, name: str, loss: float) -> Message:
    adapter = ConfigRecord({p.NODE_NAME: name, p.RANK: 4})
    metrics = MetricRecord({p.TRAIN_LOSS: loss, p.TRAIN_SECONDS: 1.25})
    content = RecordDict({p.ADAPTER: adapter, p.METRICS: metrics})
    return Message(content, reply_to=msg)


def test_plain_lines_name_each_node_of_a_small_round_and_count_quarters_of_a_large_one() -> None:
    printed: list[str] = []
    plain = PlainProgress(printed.append)
    small = [_instruction(1001 + i) for i in range(2)]
    plain.pushed(small)
    plain.replied(small[0], _reply(small[0], "banking-3", 2.5))
    plain.replied(small[1], Message(Error(code=500, reason="ValueError: no data\n..."),
                                    reply_to=small[1]))  # fmt: skip
    assert printed == ["[fedlora]   banking-3: rank 4, train loss 2.500, 1.2 s",
                       "[fedlora]   node 1002 failed: ValueError: no data"]  # fmt: skip
    printed.clear()
    large = [_instruction(2000 + i) for i in range(100)]
    plain.pushed(large)
    for msg in large:
        plain.replied(msg, _reply(msg, f"n{msg.metadata.dst_node_id}", 2.0))
    assert [line.split(",")[0] for line in printed] == [
        f"[fedlora]   round 2 train: {k}/100 replies" for k in (25, 50, 75)]  # fmt: skip
    assert PER_NODE_LINES < 100


def test_the_live_bar_draws_on_a_terminal_and_prints_lines_above_it() -> None:
    screen = io.StringIO()
    live = LiveProgress(Console(file=screen, force_terminal=True, width=120))
    try:
        messages = [_instruction(1001 + i) for i in range(20)]
        live.pushed(messages)
        for msg in messages[:10]:
            live.replied(msg, _reply(msg, "x", 2.0))
        live.bar.refresh()
        live.echo("[fedlora] round 2/3 | a line")
        for msg in messages[10:]:
            live.replied(msg, _reply(msg, "x", 2.0))
        assert live.task is None  # the round's bar is gone once every node replied
    finally:
        live.close()
    out = screen.getvalue()
    assert "[fedlora] round 2 train" in out and "10/20" in out
    assert "[fedlora] round 2/3 | a line" in out
    assert "\x1b[" in out  # drawn with terminal control sequences, unlike plain lines


def test_the_end_of_run_summary_names_a_bounded_number_of_nodes(tmp_path: Path) -> None:
    log = RunLog(tmp_path, 1, echo=lambda _: None)
    log.write(record(100, sampled=100, refused=0, server_round=0))
    log.write(record(100, sampled=40, refused=30, server_round=1))
    lines = log.summary_table().splitlines()
    assert len(lines) == 1 + SUMMARY_NODES + 1 + 1 + SUMMARY_DECLINES + 1
    assert lines[SUMMARY_NODES + 1] == f"… and {100 - SUMMARY_NODES} more nodes, see metrics.jsonl"
    assert lines[-1] == f"… and {30 - SUMMARY_DECLINES} more nodes not used, see metrics.jsonl"

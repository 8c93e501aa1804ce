"""The deploy bench's reading of the node log's record lines (bench/deploy.py)."""

from __future__ import annotations

import pytest

from bench import deploy
from bench.deploy import message_lines, overhead, overhead_by_round, per_round

LOG = """INFO :      Received successfully
[fedlora] round 0 evaluate: 1.64 s (load 0.23, apply 0.00, eval 1.41, other 0.00)
[fedlora] round 1 train: 9.18 s (load 0.00, apply 0.05, train 9.00, other 0.13)
[fedlora] round 1 evaluate: 0.80 s (load 0.00, apply 0.06, eval 0.70, other 0.04)
[fedlora] round 2 train: 3.00 s (load 0.00, apply 0.00, other 3.00) (error reply)
"""


def test_record_lines_are_read_with_their_phases() -> None:
    lines = message_lines(LOG)
    assert [(r, k) for r, k, _, _ in lines] == [(0, "evaluate"), (1, "train"), (1, "evaluate"),
                                                (2, "train")]  # fmt: skip
    assert lines[1][3] == {"load": 0.0, "apply": 0.05, "train": 9.0, "other": 0.13}


def test_overhead_leaves_out_training_scoring_and_round_0() -> None:
    spent, trained = overhead(message_lines(LOG))
    assert trained == pytest.approx(9.0)
    assert spent == pytest.approx(0.18 + 0.10 + 3.0)  # the failed message is all overhead


def test_seconds_per_round_from_elapsed() -> None:
    records = [{"elapsed_s": 5.0}, {"elapsed_s": 15.0}, {"elapsed_s": 20.0}, {"elapsed_s": 35.0}]
    assert per_round(records) == pytest.approx(10.0)


def test_overhead_per_round() -> None:
    log = LOG + "[fedlora] round 2 train: 5.0 s (load 0.00, apply 0.50, train 4.00, other 0.50)\n"
    by_round = overhead_by_round(message_lines(log))
    assert by_round == pytest.approx({1: (0.18 + 0.10) / 9.0, 2: (3.0 + 1.0) / 4.0})


def test_a_fast_machine_gets_enough_steps_for_20_seconds_of_training() -> None:
    assert deploy.scaled_steps(100, 5.0) == 500  # 5 s -> about 25 s
    assert deploy.scaled_steps(100, 26.2) == 100  # already long enough: never fewer steps
    assert deploy.scaled_steps(100, 19.9) * 19.9 / 100 >= deploy.MIN_TRAIN_S

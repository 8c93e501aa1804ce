"""A hundred institutions, 10 % of them sampled per round: `fedlora data synth --nodes 100` and
`fedlora simulate` with `fraction-train` and `fraction-evaluate` (slow tier; measured 30-45 s on 2
shared cores, most of it importing torch and the 3 x 20 node messages)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from server.cli.main import main
from server.report.view import run_view
from server.run.progress import LINE_CHARS, round_counts
from server.run.runlog import read_metrics

ROUNDS = 3
SMALL = ["--config", "local-steps=2", "--config", "batch-size=4", "--config", "max-length=48"]


@pytest.mark.slow
def test_a_hundred_nodes_three_rounds_ten_percent_sampled(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "data"
    synth = ["data", "synth", "--nodes", "100", "--train", "8", "--eval", "4", "--out", str(data)]
    assert main(synth) == 0
    started = time.perf_counter()
    simulate = ["simulate", "--data", str(data), "--rounds", str(ROUNDS), "--threads", "1",
                "--run-dir", str(tmp_path / "runs"), "--config", "fraction-train=0.1",
                "--config", "fraction-evaluate=0.1", *SMALL]  # fmt: skip
    assert main(simulate) == 0
    took = time.perf_counter() - started
    out = capsys.readouterr().out.splitlines()

    rounds = [line for line in out if line.startswith("[fedlora] round ")]
    assert [line.split(" | ")[0] for line in rounds] == [
        f"[fedlora] round {r}/{ROUNDS}" for r in range(ROUNDS + 1)]  # fmt: skip
    assert all(len(line) <= LINE_CHARS for line in out if line.startswith("[fedlora]"))
    assert all("10 sampled, 10 used, 0 refused" in line for line in rounds[1:])

    run_dir = next((tmp_path / "runs").iterdir())
    records = read_metrics(run_dir)
    assert [r["round"] for r in records] == list(range(ROUNDS + 1))
    trained: list[set[str]] = []
    for record in records:
        counts = round_counts(record)
        assert len(counts.eval_losses) == 10  # fraction-evaluate: 10 of 100 evaluate
        if record["round"] > 0:
            assert (record["available"], counts.sampled, counts.used) == (100, 10, 10)
            trained.append({n for n, e in record["nodes"].items() if e["rank"] is not None})
    assert len(set().union(*trained)) > 10  # each round draws its own sample
    view = run_view(run_dir)  # the report and dashboard read the same records
    assert view.round == ROUNDS and view.status == "finished" and len(view.eval_loss) > 10
    assert (run_dir / "report.html").is_file()
    print(f"\n100 nodes, {ROUNDS} rounds, 10 % sampled: {took:.1f} s (simulate, after imports)")

"""The README journey through `fedlora`: synth data, simulate on it, use the adapter."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from server.cli.main import main
from server.run.runlog import read_metrics

SMALL = [
    "--config", "local-steps=2", "--config", "batch-size=4", "--config", "max-length=48",
]  # fmt: skip


def test_synth_simulate_inspect_evaluate(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "data"
    assert (
        main(
            [
                "data",
                "synth",
                "--out",
                str(data),
                "--partitions",
                "2",
                "--train",
                "12",
                "--eval",
                "6",
            ]
        )
        == 0
    )
    assert sorted(d.name for d in data.iterdir()) == ["hospital-cardiology", "hospital-pediatrics"]

    runs = tmp_path / "runs"
    args = [
        "simulate",
        "--data",
        str(data),
        "--rounds",
        "1",
        "--ranks",
        "2,3",
        "--run-dir",
        str(runs),
    ]
    assert main(args + SMALL) == 0
    out = capsys.readouterr().out
    assert "round 1/1" in out and "hospital-pediatrics: rank 3" in out
    run_dir = next(runs.iterdir())
    last = read_metrics(run_dir)[-1]
    assert set(last["nodes"]) == {"hospital-cardiology", "hospital-pediatrics"}

    adapter = run_dir / "adapter"
    assert main(["adapter", "inspect", str(adapter)]) == 0
    assert "rank r=5 lora_alpha=5" in capsys.readouterr().out

    node = data / "hospital-pediatrics"
    assert (
        main(["adapter", "evaluate", str(adapter), "--data", str(node), "--max-length", "48"]) == 0
    )
    printed = capsys.readouterr().out
    adapted = float(re.search(r"with adapter (\d+\.\d+)", printed).group(1))
    assert adapted == pytest.approx(last["nodes"]["hospital-pediatrics"]["eval_loss"], abs=1e-3)


def test_bad_input_is_a_clear_error_not_a_traceback(tmp_path: Path, capsys) -> None:
    assert main(["simulate", "--data", str(tmp_path)]) == 2
    assert "`--data`" in capsys.readouterr().err
    assert main(["simulate", "--config", "learning-rate=5", "--run-dir", str(tmp_path)]) == 2
    assert "`learning-rate`" in capsys.readouterr().err

"""``fedlora compare`` end to end on a tiny federation: table, plot and numbers written."""

from __future__ import annotations

import json
from pathlib import Path

from server.cli.main import build_parser
from server.compare.run import Arm, compare, default_arms

SMALL = {"local-steps": 2, "batch-size": 4, "max-length": 48, "synth-train-examples": 16,
         "synth-eval-examples": 8}  # fmt: skip


def test_compare_writes_the_table_the_plot_and_the_numbers(tmp_path: Path) -> None:
    arms = [Arm("flora [het]", "flora", "2,4,3", SMALL),
            Arm("centralized-total [het]", "centralized-total", "2,4,3", SMALL),
            Arm("local [het]", "local", "2,4,3", SMALL)]  # fmt: skip
    lines: list[str] = []
    results = compare(rounds=2, out=tmp_path, arms=arms, echo=lines.append)
    assert [len(r.curve) for r in results] == [3, 3, 3]  # round 0 (base model) + 2 rounds
    assert len({round(r.curve[0], 6) for r in results}) == 1  # every arm starts from one model
    assert all(r.final < r.curve[0] for r in results)
    table = (tmp_path / "comparison.md").read_text()
    assert all(f"| {arm.label} |" in table for arm in arms)
    assert (tmp_path / "comparison.png").stat().st_size > 10_000
    numbers = json.loads((tmp_path / "comparison.json").read_text())
    assert numbers[0]["bytes_down"] > 0 and numbers[1]["bytes_down"] == 0
    assert any("[compare] 3/3 local [het]" in line for line in lines)  # progress while it runs


def test_the_default_comparison_covers_every_strategy_and_the_cli_knows_it() -> None:
    kinds = {(arm.kind, arm.ranks) for arm in default_arms()}
    for name in ("flora", "zeropad", "flexlora", "ffa"):
        assert (name, "4,8,16") in kinds
    assert ("fedit", "8,8,8") in kinds and ("fedit", "4,8,16") not in kinds
    args = build_parser().parse_args(["compare", "--rounds", "4", "--out", "x"])
    assert args.rounds == 4 and args.out == Path("x")

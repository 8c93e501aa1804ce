"""``fedlora compare`` end to end: ``--quick`` over every setting writes the tables, the plot and
the arm records; the default comparison covers every strategy and setting."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from server.cli.main import build_parser, main
from server.compare.arms import (
    KINDS,
    SETTINGS,
    Arm,
    default_arms,
    personalized,
    quick_arms,
    run_config,
)
from server.compare.run import compare

RECORD_FIELDS = {"setting", "label", "kind", "strategy", "config", "final_mean", "final_nodes",
                 "curve", "bytes_up", "bytes_down", "wall_s"}  # fmt: skip


def test_quick_compare_covers_every_setting(tmp_path: Path) -> None:
    assert main(["compare", "--quick", "--rounds", "1", "--out", str(tmp_path), "--jobs", "1"]) == 0
    records = json.loads((tmp_path / "comparison.json").read_text())
    assert isinstance(records, list) and all(set(r) >= RECORD_FIELDS for r in records)
    assert {r["setting"] for r in records} == set(SETTINGS)
    assert {r["kind"] for r in records} == {"federated", "personalized", "local"}
    for record in records:
        assert len(record["curve"]) == 2  # round 0 (base model) + 1 round
        assert record["final_mean"] == record["curve"][-1]
        if record["setting"] == "dp" and record["kind"] == "federated":
            # one round of a global model under DP-SGD noise drawn from the OS: it barely moves
            # and may end on either side of the base model (4.7735 against 4.7724 seen once)
            assert abs(record["final_mean"] - record["curve"][0]) < 0.1
        else:
            assert record["final_mean"] < record["curve"][0]
        nodes = 6 if record["setting"] == "scarce" else 3
        assert len(record["final_nodes"]) == nodes
        assert (record["strategy"] is None) == (record["kind"] == "local")
        assert (record["bytes_up"] > 0) == (record["kind"] != "local")
    dp = [r for r in records if r["setting"] == "dp" and r["kind"] == "federated"]
    assert dp and dp[0]["config"]["privacy"] == "dp-sgd"
    table = (tmp_path / "comparison.md").read_text()
    assert all(f"### `{name}`" in table for name in SETTINGS) and "### Goals" in table
    assert all(f"| {r['label']} |" in table for r in records)
    assert (tmp_path / "comparison.png").stat().st_size > 10_000


@pytest.mark.slow  # worker processes, each importing torch
def test_arms_in_worker_processes_equal_arms_in_process(tmp_path: Path) -> None:
    """``--jobs 2`` (two workers, one torch thread each) changes nothing but the wall time."""
    arms = [Arm("flora [scarce]", "federated", "scarce", "flora"),
            Arm("local [het]", "local", "het"), personalized("het")]  # fmt: skip
    echoed: list[str] = []
    one = compare(rounds=1, out=tmp_path / "one", arms=arms, quick=True, echo=echoed.append)
    two = compare(rounds=1, out=tmp_path / "two", arms=arms, quick=True, jobs=2, echo=echoed.append)
    assert [r.arm for r in two] == arms  # in the arms' order, whichever worker ended first
    for a, b in zip(one, two, strict=True):
        assert (a.curve, a.final_nodes, a.bytes_up, a.bytes_down, a.notes) == (
            b.curve, b.final_nodes, b.bytes_up, b.bytes_down, b.notes)  # fmt: skip
    assert any("3 arms ran in 2 worker processes" in line for line in echoed)
    records = json.loads((tmp_path / "two" / "comparison.json").read_text())
    assert [r["label"] for r in records] == [a.label for a in arms]


def test_the_default_comparison_covers_every_strategy_setting_and_kind() -> None:
    arms = default_arms()
    found = {(arm.setting, arm.strategy) for arm in arms}
    for name in ("flora", "flora-fresh", "zeropad", "flexlora", "ffa"):
        assert ("het", name) in found
    assert ("r8", "fedit") in found and ("het", "fedit") not in found
    assert {arm.kind for arm in arms} == set(KINDS)
    assert {arm.setting for arm in arms} == set(SETTINGS)
    assert len(quick_arms()) == 2 * len(SETTINGS) + 2
    args = build_parser().parse_args(["compare", "--rounds", "4", "--out", "x", "--quick"])
    assert args.rounds == 4 and args.out == Path("x") and args.quick


def test_arms_refuse_what_they_cannot_run() -> None:
    with pytest.raises(ValueError, match="`kind` is 'global'"):
        Arm("x", "global", "het", "flora")
    with pytest.raises(ValueError, match="needs `strategy` set"):
        Arm("x", "federated", "het")
    with pytest.raises(ValueError, match="`setting` is 'iid'"):
        Arm("x", "local", "iid")
    with pytest.raises(ValueError, match="`--settings` names 'iid'"):
        default_arms(["het", "iid"])


def test_a_split_arm_runs_the_same_steps_in_more_rounds(tmp_path: Path) -> None:
    [split] = [a for a in default_arms(["scarce"]) if a.split > 1]
    assert split.split == 4 and split.config == {"server-momentum": 0.5}
    config = run_config(split, rounds=10, out=tmp_path)
    assert (config["local-steps"], config["num-server-rounds"]) == (5, 40)
    assert config["server-momentum"] == 0.5 and config["strategy"] == "flora"
    plain = run_config(Arm("flora [scarce]", "federated", "scarce", "flora"), rounds=10,
                       out=tmp_path)  # fmt: skip
    assert (plain["local-steps"], plain["num-server-rounds"]) == (20, 10)
    with pytest.raises(ValueError, match=r"`local-steps` is 10: arm .* use a multiple of 4"):
        run_config(split, rounds=10, out=tmp_path, extra={"local-steps": 10})
    with pytest.raises(ValueError, match="`split` is 0"):
        Arm("x", "federated", "scarce", "flora", split=0)

"""The comparison report from hand-made results: tables per setting, the goals, the records."""

from __future__ import annotations

from pathlib import Path

from server.compare.arms import Arm, ArmResult, personalized
from server.compare.report import goals, plot_curves, table
from server.compare.run import to_record


def _result(arm: Arm, final: dict[str, float], start: float = 4.0) -> ArmResult:
    mean = sum(final.values()) / len(final)
    return ArmResult(arm, [start, (start + mean) / 2, mean], final, bytes_down=1e5, wall_s=3.0)


RESULTS = [
    _result(Arm("flora [scarce]", "federated", "scarce", "flora"), {"a": 1.0, "b": 2.0}),
    _result(Arm("local [scarce]", "local", "scarce"), {"a": 1.5, "b": 1.9}),
    _result(Arm("flora [het]", "federated", "het", "flora"), {"a": 1.0, "b": 1.0}),
    _result(Arm("flexlora [het]", "federated", "het", "flexlora"), {"a": 0.991, "b": 0.991}),
    _result(personalized("het"), {"a": 0.5, "b": 0.6}),
    _result(Arm("local [het]", "local", "het"), {"a": 0.7, "b": 0.65}),
    # a variant of the default strategy after it: not the default (it used to replace it)
    _result(
        Arm("flora η=3 [het]", "federated", "het", "flora", {"server-lr": 3.0}),
        {"a": 3.0, "b": 3.0},
    ),
]


def test_goals_are_met_or_not_with_the_numbers() -> None:
    found = goals(RESULTS)
    scarce = next(g for g in found if g.startswith("- `scarce`: default"))
    assert "NOT met" in scarce and "a +0.500" in scarce and "b -0.100" in scarce
    personal = next(g for g in found if "flora+personal [het] beats" in g)
    assert ": met " in personal and "a +0.200" in personal and "b +0.050" in personal
    within = next(g for g in found if g.startswith("- `het`: default strategy within 1%"))
    assert ": met " in within and "+0.9%" in within
    het_global = next(g for g in found if g.startswith("- `het`: default strategy's global"))
    assert "NOT met" in het_global and "a -0.300" in het_global  # flora 1.0, not η=3's 3.0


def test_table_has_a_section_per_setting_and_the_plot_a_panel_each(tmp_path: Path) -> None:
    text = table(RESULTS, rounds=2, total_s=10.0)
    assert text.index("### `scarce`") < text.index("### `het`") < text.index("### Goals")
    assert "| flora+personal [het] | personalized | 0.550 |" in text
    plot_curves(RESULTS, tmp_path / "c.png")
    assert (tmp_path / "c.png").stat().st_size > 10_000


def test_record_fields() -> None:
    record = to_record(RESULTS[4], {"local-steps": 2})
    assert record["setting"] == "het" and record["kind"] == "personalized"
    assert record["strategy"] == "flora" and record["config"]["personal"] == "private-lora"
    assert record["config"]["lora-ranks"] == "4,8,16" and record["config"]["local-steps"] == 2
    assert record["final_mean"] == 0.55 and record["final_nodes"] == {"a": 0.5, "b": 0.6}
    local = to_record(RESULTS[1], {})
    assert local["strategy"] is None and "strategy" not in local["config"]

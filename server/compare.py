"""``fedlora compare``: every strategy and the reference trainings on one federation.

Same non-IID synthetic institutions, seeds, local steps and batch size for every arm; once with
heterogeneous ranks and once with all nodes at one rank (where FedIT takes part). The reference
arms (server/compare_baselines.py) are centralized LoRA on the pooled data and each node alone.
Results: ``comparison.md`` (table), ``comparison.png`` (curves), ``comparison.json`` (numbers).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from client.settings import ConfigValue

HETEROGENEOUS = "4,8,16"
HOMOGENEOUS = "8,8,8"
DEFAULT_ROUNDS = 10
NUM_NODES = 3


@dataclass(frozen=True)
class Arm:
    """One line of the comparison: a strategy (or reference training) and its settings."""

    label: str
    kind: str  # a strategy name, or "centralized", "centralized-total", "local"
    ranks: str
    config: Mapping[str, ConfigValue] = field(default_factory=dict)


@dataclass
class ArmResult:
    """What an arm measured; ``curve[t]`` is the mean eval loss over nodes after round t."""

    arm: Arm
    curve: list[float]
    final_nodes: dict[str, float]
    bytes_up: float = 0.0  # per round, all nodes together (mean over rounds)
    bytes_down: float = 0.0
    wall_s: float = 0.0
    notes: str = ""

    @property
    def final(self) -> float:
        return self.curve[-1]

    @property
    def best(self) -> tuple[float, int]:
        best = min(range(len(self.curve)), key=lambda t: self.curve[t])
        return self.curve[best], best


def default_arms() -> list[Arm]:
    """The strategies, FLoRA's variants (server-lr, cap) and the reference trainings."""
    references = ("centralized", "centralized-total", "local")
    het_names = ("flora", "zeropad", "flexlora", "ffa", *references)
    het = [Arm(f"{name} [het]", name, HETEROGENEOUS) for name in het_names]
    het[1:1] = [
        Arm("flora η=2 [het]", "flora", HETEROGENEOUS, {"server-lr": 2.0}),
        Arm("flora no cap [het]", "flora", HETEROGENEOUS, {"max-global-rank": 0}),
    ]
    # zeropad at equal ranks is FedIT exactly (same init, no padding): not run twice
    homogeneous = ("flora", "fedit", "flexlora", "ffa", *references)
    return het + [Arm(f"{name} [r8]", name, HOMOGENEOUS) for name in homogeneous]


def run_config(arm: Arm, *, rounds: int, out: Path) -> dict[str, ConfigValue]:
    """The run config an arm runs with: the defaults, its ranks and strategy, its extras."""
    from client.settings import DEFAULT_RUN_CONFIG

    slug = "".join(c if c.isascii() and c.isalnum() else "-" for c in arm.label).strip("-")
    config: dict[str, ConfigValue] = {**DEFAULT_RUN_CONFIG, "num-server-rounds": rounds}
    config.update({"lora-ranks": arm.ranks, "run-dir": str(out / "runs" / slug)})
    if arm.kind in _strategy_names():
        config["strategy"] = arm.kind
    return {**config, **arm.config}


def _strategy_names() -> set[str]:
    from strategies.registry import STRATEGIES

    return set(STRATEGIES)


def run_strategy(
    arm: Arm, config: Mapping[str, ConfigValue], echo: Callable[[str], None]
) -> ArmResult:
    """One federation through ``simulate`` (in-process); the numbers from its metrics.jsonl."""
    from server.simulate import simulate

    def progress(line: str) -> None:
        if "| eval loss" in line:
            echo(f"[compare] {arm.label}: {line.removeprefix('[fedlora] ').split(' | up')[0]}")

    start = time.perf_counter()
    outcome = simulate(num_nodes=NUM_NODES, run_config=config, echo=progress)
    wall = time.perf_counter() - start
    records = [r for r in outcome.records if "stopped" not in r]
    curve = [_mean([n["eval_loss"] for n in r["nodes"].values()]) for r in records]
    trained = records[1:] or records
    errors = [float(r.get("recompress_error", 0.0)) for r in trained]
    return ArmResult(
        arm=arm,
        curve=curve,
        final_nodes={name: float(n["eval_loss"]) for name, n in records[-1]["nodes"].items()},
        bytes_up=_mean([float(r.get("bytes_up", 0)) for r in trained]),
        bytes_down=_mean([float(r.get("bytes_down", 0)) for r in trained]),
        wall_s=wall,
        notes=f"global rank {records[-1].get('global_rank', 0)}, max trunc err "
        f"{max(errors, default=0.0):.1%}"
        + (f"; stopped: {outcome.stopped}" if outcome.stopped else ""),
    )


def _mean(values: Sequence[float | None]) -> float:
    kept = [float(v) for v in values if v is not None]
    return sum(kept) / len(kept) if kept else math.nan


def compare(
    *,
    rounds: int = DEFAULT_ROUNDS,
    out: Path,
    arms: Sequence[Arm] | None = None,
    echo: Callable[[str], None] = print,
) -> list[ArmResult]:
    """Run every arm, write the table, plot and numbers into ``out``; return the results."""
    from server.compare_baselines import run_reference
    from server.compare_report import plot_curves, table

    if rounds < 1:
        raise ValueError(f"`--rounds` is {rounds}: use an integer >= 1")
    out.mkdir(parents=True, exist_ok=True)
    arms = list(arms or default_arms())
    results: list[ArmResult] = []
    start = time.perf_counter()
    for i, arm in enumerate(arms, start=1):
        echo(f"[compare] {i}/{len(arms)} {arm.label} ({time.perf_counter() - start:.0f} s so far)")
        config = run_config(arm, rounds=rounds, out=out)
        runner = run_strategy if arm.kind in _strategy_names() else run_reference
        result = runner(arm, config, echo)
        echo(
            f"[compare] {arm.label}: final mean eval loss {result.final:.3f}, {result.wall_s:.0f} s"
        )
        results.append(result)
    total = time.perf_counter() - start
    (out / "comparison.md").write_text(table(results, rounds=rounds, total_s=total), "utf-8")
    (out / "comparison.json").write_text(json.dumps([_to_json(r) for r in results], indent=1))
    plot_curves(results, out / "comparison.png")
    echo(table(results, rounds=rounds, total_s=total))
    echo(f"[compare] wrote {out / 'comparison.md'} and {out / 'comparison.png'} in {total:.0f} s")
    return results


def _to_json(result: ArmResult) -> dict[str, Any]:
    return {**asdict(result), "final": result.final, "best": result.best[0]}


def add_compare_command(sub: Any) -> None:
    """``fedlora compare [--rounds N] [--out DIR]`` (sub: argparse's sub-parsers)."""
    cmd = sub.add_parser(
        "compare", help="every strategy, centralized and local-only LoRA on one federation"
    )
    cmd.add_argument("--rounds", type=int, default=DEFAULT_ROUNDS,
                     help=f"rounds per federation (default {DEFAULT_ROUNDS})")  # fmt: skip
    cmd.add_argument("--out", type=Path, default=Path("runs") / "compare",
                     help="folder for comparison.md/.png/.json and the runs")  # fmt: skip
    cmd.set_defaults(func=_cmd_compare)


def _cmd_compare(args: argparse.Namespace) -> int:
    compare(rounds=args.rounds, out=args.out)
    return 0

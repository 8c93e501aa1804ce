"""``fedlora compare``: every strategy and the reference trainings on one federation.

Same non-IID synthetic institutions, seeds, local steps and batch size for every arm; once with
heterogeneous ranks and once with all nodes at one rank (where FedIT takes part). The reference
arms (server/compare/baselines.py) are centralized LoRA on the pooled data and each node alone.
Results: ``comparison.md`` (table), ``comparison.png`` (curves), ``comparison.json`` (numbers).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from common.config import ConfigValue
from server.compare.arms import (
    DEFAULT_ROUNDS,
    NUM_NODES,
    Arm,
    ArmResult,
    default_arms,
    run_config,
    strategy_names,
)


def run_strategy(
    arm: Arm, config: Mapping[str, ConfigValue], echo: Callable[[str], None]
) -> ArmResult:
    """One federation through ``simulate`` (in-process); the numbers from its metrics.jsonl."""
    from server.simulation.simulate import simulate

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
    from server.compare.baselines import run_reference
    from server.compare.report import plot_curves, table

    if rounds < 1:
        raise ValueError(f"`--rounds` is {rounds}: use an integer >= 1")
    out.mkdir(parents=True, exist_ok=True)
    arms = list(arms or default_arms())
    results: list[ArmResult] = []
    start = time.perf_counter()
    for i, arm in enumerate(arms, start=1):
        echo(f"[compare] {i}/{len(arms)} {arm.label} ({time.perf_counter() - start:.0f} s so far)")
        config = run_config(arm, rounds=rounds, out=out)
        runner = run_strategy if arm.kind in strategy_names() else run_reference
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

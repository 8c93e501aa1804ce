"""``fedlora compare``: every setting's strategies and reference trainings, side by side.

Per setting (server/compare/arms.py) the same synthetic institutions, seeds, local steps and
batch size for every arm: the federated strategies, a personalized arm (the default strategy
with a private LoRA on each node, client/model/personal.py), and the reference trainings
(server/compare/baselines.py): centralized LoRA on the pooled data and each node alone.
Results: ``comparison.md`` (tables and goals), ``comparison.png`` (curves),
``comparison.json`` (a list of arm records).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from common.config import ConfigValue
from server.compare.arms import (
    DEFAULT_ROUNDS,
    QUICK_CONFIG,
    SETTINGS,
    Arm,
    ArmResult,
    default_arms,
    quick_arms,
    run_config,
)

NodeConfigs = list[dict[str, ConfigValue]]


def node_configs(arm: Arm, config: Mapping[str, ConfigValue], *, out: Path) -> NodeConfigs:
    """The node configs of an arm's setting: synthetic partitions, or the scarce institutions'
    folders (written once under ``out/data``); ``personal`` for a personalized arm."""
    from client.data.synth import write_setting
    from client.data.synth.institutions import SCARCE_EVAL, SCARCE_NAMES, SCARCE_TRAIN

    setting = SETTINGS[arm.setting]
    nodes: NodeConfigs
    if setting.data == "scarce":
        n_train = min(SCARCE_TRAIN, int(config["synth-train-examples"]))
        n_eval = min(SCARCE_EVAL, int(config["synth-eval-examples"]))
        seed = int(config["seed"])
        folder = out / "data" / f"scarce-{n_train}-{n_eval}-seed{seed}"
        if not folder.is_dir():  # written whole, then renamed: a worker never reads half of it
            part = folder.with_name(f"{folder.name}.part-{os.getpid()}")
            shutil.rmtree(part, ignore_errors=True)
            write_setting(part, "scarce", n_train=n_train, n_eval=n_eval, seed=seed)
            part.replace(folder)
        nodes = [{"data-path": str(folder / n), "node-name": n} for n in SCARCE_NAMES]
    else:
        nodes = [{"partition-id": i, "num-partitions": 3} for i in range(3)]
    if arm.kind == "personalized":
        for node in nodes:
            node["personal"] = str(arm.config.get("personal", "private-lora"))
    for i, node in enumerate(nodes):
        node["partition-id"] = i  # the rank: lora-ranks[i % len]
    return nodes


def run_strategy(
    arm: Arm, config: Mapping[str, ConfigValue], nodes: NodeConfigs, echo: Callable[[str], None]
) -> ArmResult:
    """One federation through ``simulate`` (in-process); the numbers from its metrics.jsonl."""
    from server.simulation.simulate import simulate

    def progress(line: str) -> None:
        if "| eval loss" in line:
            echo(f"[compare] {arm.label}: {line.removeprefix('[fedlora] ').split(' | up')[0]}")

    start = time.perf_counter()
    outcome = simulate(num_nodes=len(nodes), run_config=config, node_configs=nodes, echo=progress)
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
    quick: bool = False,
    extra: Mapping[str, ConfigValue] | None = None,
    jobs: int = 1,
    echo: Callable[[str], None] = print,
) -> list[ArmResult]:
    """Run every arm, write the tables, plot and numbers into ``out``; return the results.

    ``quick``: :func:`quick_arms` (unless ``arms`` is given) on a small configuration
    (``QUICK_CONFIG``: 2 local steps, 16 training records); ``extra``: run-config keys for
    every arm (e.g. ``base-model``); ``jobs``: arms run in that many worker processes at once
    (server/compare/pool.py; the results do not change).
    """
    from server.compare.report import plot_curves, table

    if rounds < 1:
        raise ValueError(f"`--rounds` is {rounds}: use an integer >= 1")
    out.mkdir(parents=True, exist_ok=True)
    arms = list(arms or (quick_arms() if quick else default_arms()))
    overrides = {**(QUICK_CONFIG if quick else {}), **(extra or {})}
    done: dict[int, ArmResult] = {}
    start = time.perf_counter()

    def finished(index: int, result: ArmResult) -> None:
        echo(f"[compare] {result.arm.label}: final mean eval loss {result.final:.3f}, "
             f"{result.wall_s:.0f} s ({len(done) + 1}/{len(arms)} done, "
             f"{time.perf_counter() - start:.0f} s so far)")  # fmt: skip
        done[index] = result
        records = [to_record(done[i], overrides) for i in sorted(done)]  # a stopped run keeps them
        (out / "comparison.json").write_text(json.dumps(records, indent=1) + "\n", "utf-8")

    for arm in arms:  # every arm's run config checked and the data written once, up front
        node_configs(arm, run_config(arm, rounds=rounds, out=out, extra=overrides), out=out)
    if jobs > 1 and len(arms) > 1:
        from server.compare.pool import run_in_workers

        run_in_workers(arms, rounds=rounds, out=out, overrides=overrides, jobs=jobs,
                       on_result=finished, echo=echo)  # fmt: skip
    else:
        for i, arm in enumerate(arms):
            echo(f"[compare] {i + 1}/{len(arms)} {arm.label}")
            finished(i, run_arm(arm, rounds=rounds, out=out, overrides=overrides, echo=echo))
    results = [done[i] for i in range(len(arms))]
    total = time.perf_counter() - start
    text = table(results, rounds=rounds, total_s=total)
    (out / "comparison.md").write_text(text, "utf-8")
    plot_curves(results, out / "comparison.png")
    echo(text)
    echo(f"[compare] wrote {out / 'comparison.md'} and {out / 'comparison.png'} in {total:.0f} s")
    return results


def run_arm(
    arm: Arm,
    *,
    rounds: int,
    out: Path,
    overrides: Mapping[str, ConfigValue],
    echo: Callable[[str], None],
) -> ArmResult:
    """One arm: its federation (:func:`run_strategy`) or reference training."""
    from server.compare.baselines import run_reference

    config = run_config(arm, rounds=rounds, out=out, extra=overrides)
    nodes = node_configs(arm, config, out=out)
    runner = run_reference if arm.strategy is None else run_strategy
    result = runner(arm, config, nodes, echo)
    if arm.split > 1:
        result.notes += (f"; {config['local-steps']} local steps × {config['num-server-rounds']} "
                         "rounds")  # fmt: skip
    return result


def to_record(result: ArmResult, overrides: Mapping[str, ConfigValue]) -> dict[str, Any]:
    """One arm as a ``comparison.json`` record (top-level fields as documented)."""
    arm = result.arm
    config = {"lora-ranks": arm.ranks, **SETTINGS[arm.setting].config, **overrides, **arm.config}
    if arm.strategy is not None:
        config["strategy"] = arm.strategy
    if arm.split > 1:  # each round's local steps as `split` rounds (server/compare/arms.py)
        config["split"] = arm.split
    return {
        "setting": arm.setting,
        "label": arm.label,
        "kind": arm.kind,
        "strategy": arm.strategy,
        "config": config,
        "final_mean": result.final,
        "best_mean": result.best[0],
        "best_round": result.best[1],
        "final_nodes": result.final_nodes,
        "curve": result.curve,
        "bytes_up": result.bytes_up,
        "bytes_down": result.bytes_down,
        "wall_s": result.wall_s,
        "notes": result.notes,
    }

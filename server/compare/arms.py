"""The arms of ``fedlora compare``: which strategies and reference trainings, with which ranks.

An arm is one line of the comparison; ``ArmResult`` is what it measured. The runner
(server/compare/run.py), the reference trainings (server/compare/baselines.py) and the report
(server/compare/report.py) all build on these types.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from common.config import ConfigValue

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
    from common.config import DEFAULT_RUN_CONFIG

    slug = "".join(c if c.isascii() and c.isalnum() else "-" for c in arm.label).strip("-")
    config: dict[str, ConfigValue] = {**DEFAULT_RUN_CONFIG, "num-server-rounds": rounds}
    config.update({"lora-ranks": arm.ranks, "run-dir": str(out / "runs" / slug)})
    if arm.kind in strategy_names():
        config["strategy"] = arm.kind
    return {**config, **arm.config}


def strategy_names() -> set[str]:
    from strategies.registry import STRATEGIES

    return set(STRATEGIES)

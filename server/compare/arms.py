"""The arms of ``fedlora compare``: which settings, strategies and reference trainings.

A *setting* is one federation: its institutions (the synthetic ``domains`` or ``scarce`` data,
client/data/synth/), their LoRA ranks and run-config extras (privacy). An *arm* is one line of
the comparison inside a setting; ``ArmResult`` is what it measured. The runner
(server/compare/run.py), the reference trainings (server/compare/baselines.py) and the report
(server/compare/report.py) all build on these types.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from common.config import ConfigValue

DEFAULT_ROUNDS = 10
KINDS = ("federated", "personalized", "centralized", "centralized-total", "local")
REFERENCES = ("centralized", "centralized-total", "local")


@dataclass(frozen=True)
class Setting:
    """One federation of the comparison: its data, ranks and run-config extras."""

    name: str
    data: str  # "domains" (three institutions, 256 records) or "scarce" (six, 48 records)
    ranks: str
    config: Mapping[str, ConfigValue] = field(default_factory=dict)
    notes: str = ""


SETTINGS: dict[str, Setting] = {
    s.name: s
    for s in (
        Setting("het", "domains", "4,8,16", notes="three domains, ranks 4/8/16"),
        Setting("r8", "domains", "8,8,8", notes="three domains, all rank 8"),
        Setting("scarce", "scarce", "4,8,16", notes="six institutions, 48 records each"),
        Setting(
            "dp",
            "domains",
            "4,8,16",
            {"privacy": "dp-sgd", "dp-target-epsilon": 8.0},
            notes="three domains, ranks 4/8/16, DP at ε = 8 per node",
        ),
    )
}


@dataclass(frozen=True)
class Arm:
    """One line of the comparison: a strategy (or reference training) in a setting."""

    label: str
    kind: str  # one of KINDS
    setting: str = "het"
    strategy: str | None = None  # the strategy of a federated or personalized arm
    config: Mapping[str, ConfigValue] = field(default_factory=dict)
    # Each round's `local-steps` run as this many rounds of `local-steps` / split steps: the
    # same steps per node, `split` times the rounds (docs/federation-value.md)
    split: int = 1

    def __post_init__(self) -> None:
        if self.split < 1:
            raise ValueError(f"arm `split` is {self.split}: use an integer >= 1")
        if self.kind not in KINDS:
            raise ValueError(f"arm `kind` is {self.kind!r}: use one of {', '.join(KINDS)}")
        if (self.strategy is None) != (self.kind in REFERENCES):
            raise ValueError(f"arm {self.label!r}: a {self.kind} arm needs `strategy` "
                             f"{'None' if self.kind in REFERENCES else 'set'}")  # fmt: skip
        if self.setting not in SETTINGS:
            raise ValueError(f"arm `setting` is {self.setting!r}: use one of {', '.join(SETTINGS)}")

    @property
    def ranks(self) -> str:
        return str(self.config.get("lora-ranks", SETTINGS[self.setting].ranks))


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


def _federated(setting: str, *names: str, extra: Sequence[Arm] = ()) -> list[Arm]:
    arms = [Arm(f"{n} [{setting}]", "federated", setting, n) for n in names]
    return [*arms, *extra]


def _references(setting: str) -> list[Arm]:
    return [Arm(f"{kind} [{setting}]", kind, setting) for kind in REFERENCES]


def personalized(setting: str, strategy: str = "flora") -> Arm:
    """The personalized arm: ``strategy`` for the shared part, a private LoRA on each node."""
    return Arm(f"{strategy}+personal [{setting}]", "personalized", setting, strategy,
               {"personal": "private-lora"})  # fmt: skip


def default_arms(settings: Sequence[str] = ("het", "r8", "scarce", "dp")) -> list[Arm]:
    """Per setting the strategies, FLoRA's variants, a personalized arm and the references."""
    arms: list[Arm] = []
    for name in settings:
        if name == "het":
            arms += _federated("het", "flora", "flora-fresh", "zeropad", "flexlora", "ffa")
        elif name == "r8":  # zeropad at equal ranks is FedIT exactly: not run twice
            arms += _federated("r8", "flora", "flora-fresh", "fedit", "flexlora", "ffa")
        elif name == "scarce":
            momentum = Arm("flora β=0.5 [scarce]", "federated", "scarce", "flora",
                           {"server-momentum": 0.5})  # fmt: skip
            split = Arm("flora β=0.5 ×4 rounds [scarce]", "federated", "scarce", "flora",
                        {"server-momentum": 0.5}, split=4)  # fmt: skip
            arms += _federated("scarce", "flora", "flora-fresh", "flexlora",
                               extra=[momentum, split])  # fmt: skip
        elif name == "dp":
            lora = {"privacy": "dp-lora"}
            arms += _federated("dp", "flora", "flexlora", extra=[
                Arm("ffa dp-lora [dp]", "federated", "dp", "ffa", lora),
                Arm("flora dp-lora [dp]", "federated", "dp", "flora", lora)])  # fmt: skip
        else:
            raise ValueError(f"`--settings` names {name!r}: use some of {', '.join(SETTINGS)}")
        if name != "dp":
            arms.append(personalized(name))
        arms += [a for a in _references(name) if name != "dp" or a.kind == "local"]
    return arms


def quick_arms(settings: Sequence[str] = tuple(SETTINGS)) -> list[Arm]:
    """``--quick``: the default strategy and local-only in each setting, personalized in
    ``het`` and ``scarce``."""
    arms: list[Arm] = []
    for name in settings:
        if name not in SETTINGS:
            raise ValueError(f"`--settings` names {name!r}: use some of {', '.join(SETTINGS)}")
        arms.append(Arm(f"flora [{name}]", "federated", name, "flora"))
        if name in ("het", "scarce"):
            arms.append(personalized(name))
        arms.append(Arm(f"local [{name}]", "local", name))
    return arms


QUICK_CONFIG: dict[str, ConfigValue] = {
    "local-steps": 2,
    "batch-size": 4,
    "max-length": 48,
    "synth-train-examples": 16,
    "synth-eval-examples": 8,
}


def run_config(
    arm: Arm, *, rounds: int, out: Path, extra: Mapping[str, ConfigValue] | None = None
) -> dict[str, ConfigValue]:
    """The run config an arm runs with: defaults, its setting, its strategy, its extras."""
    from common.config import DEFAULT_RUN_CONFIG

    setting = SETTINGS[arm.setting]
    slug = "".join(c if c.isascii() and c.isalnum() else "-" for c in arm.label).strip("-")
    config: dict[str, ConfigValue] = {**DEFAULT_RUN_CONFIG, "num-server-rounds": rounds}
    config.update({"lora-ranks": setting.ranks, "run-dir": str(out / "runs" / slug)})
    config.update(setting.config)
    config.update(extra or {})
    if arm.strategy is not None:
        config["strategy"] = arm.strategy
    config.update({k: v for k, v in arm.config.items() if k != "personal"})
    if arm.split > 1:
        steps = int(config["local-steps"])
        if steps % arm.split:
            raise ValueError(f"`local-steps` is {steps}: arm {arm.label!r} splits each round "
                             f"into {arm.split}; use a multiple of {arm.split}")  # fmt: skip
        config["local-steps"] = steps // arm.split
        config["num-server-rounds"] = int(config["num-server-rounds"]) * arm.split
    return config

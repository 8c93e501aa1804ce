"""Privacy settings of a node: the run suggests them, the node may only make them stricter.

Torch-free. Keys (run config, and the node config to tighten them): ``privacy``
(``none`` | ``dp-sgd`` | ``dp-lora``), ``dp-noise-multiplier`` or ``dp-target-epsilon`` (one of
them; 0 means unset), ``dp-delta``, ``dp-clip-norm`` and ``dp-max-epsilon`` (the node's budget
over the life of its data set; 0 means no budget). Stricter means more noise, a lower target ε,
a lower δ, a lower budget. ``dp-clip-norm`` does not change ε (the noise scales with it), so a
node may set it freely. See docs/privacy.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, cast

from common.config import DEFAULT_RUN_CONFIG, Config, ConfigReader, SettingsError

PrivacyMode = Literal["none", "dp-sgd", "dp-lora"]
MODES: tuple[PrivacyMode, ...] = ("none", "dp-sgd", "dp-lora")
KEYS = (
    "privacy",
    "dp-noise-multiplier",
    "dp-target-epsilon",
    "dp-delta",
    "dp-clip-norm",
    "dp-max-epsilon",
)
STATE_DIR_KEY = "state-dir"


@dataclass(frozen=True)
class PrivacySettings:
    """What a node's releases are protected with; checked on construction.

    ``noise_multiplier`` and ``target_epsilon`` may both be set only after a node tightened the
    run's choice: the node then uses the larger of the two noise levels.
    """

    mode: PrivacyMode = "none"
    noise_multiplier: float = 0.0
    target_epsilon: float = 0.0
    delta: float = 1e-5
    clip_norm: float = 1.0
    max_epsilon: float = 0.0

    def __post_init__(self) -> None:
        problems = _check(self)
        if problems:
            raise SettingsError(problems)

    @property
    def enabled(self) -> bool:
        return self.mode != "none"


def _check(s: PrivacySettings) -> list[str]:
    problems = []
    if s.mode not in MODES:
        problems.append(f"`privacy` is {s.mode!r}: use one of {', '.join(MODES)}")
    for key, value in (("dp-noise-multiplier", s.noise_multiplier),
                       ("dp-target-epsilon", s.target_epsilon),
                       ("dp-max-epsilon", s.max_epsilon)):  # fmt: skip
        if not (math.isfinite(value) and value >= 0):
            problems.append(f"`{key}` is {value}: use a number >= 0 (0 = unset)")
    if not 0 < s.delta < 1:
        problems.append(f"`dp-delta` is {s.delta}: use a value in (0, 1), e.g. 1e-5")
    if not (math.isfinite(s.clip_norm) and s.clip_norm > 0):
        problems.append(f"`dp-clip-norm` is {s.clip_norm}: use a number > 0, e.g. 1.0")
    if s.mode == "none":
        for key, value in (("dp-noise-multiplier", s.noise_multiplier),
                           ("dp-target-epsilon", s.target_epsilon)):  # fmt: skip
            if value > 0:
                problems.append(
                    f"`{key}` is {value} but `privacy` is 'none': nothing would be noised; "
                    f"set `privacy` to dp-sgd or dp-lora, or `{key}` to 0"
                )
        if s.max_epsilon > 0:
            problems.append(
                f"`dp-max-epsilon` is {s.max_epsilon} but `privacy` is 'none': a node with a "
                "budget cannot send un-noised updates; set `privacy` to dp-sgd or dp-lora, or "
                "`dp-max-epsilon` to 0"
            )
    elif s.noise_multiplier == 0 and s.target_epsilon == 0:
        problems.append(
            f"`privacy` is {s.mode!r} but neither `dp-noise-multiplier` nor `dp-target-epsilon` "
            "is set: give one, e.g. dp-noise-multiplier=1.0 or dp-target-epsilon=8"
        )
    if 0 < s.max_epsilon < s.target_epsilon:
        problems.append(
            f"`dp-target-epsilon` is {s.target_epsilon} but `dp-max-epsilon` is "
            f"{s.max_epsilon}: the planned run cannot fit the budget; lower the target to "
            f"<= {s.max_epsilon} or raise the budget"
        )
    return problems


def _read(config: Config, problems: list[str]) -> dict[str, float | str]:
    """The privacy keys present in ``config``, typed (strings for ``privacy``, else floats)."""
    read = ConfigReader(config, problems=problems)
    values: dict[str, float | str] = {}
    for key in KEYS:
        value = read.optional(key, str) if key == "privacy" else read.optional(key, float)
        if value is not None:
            values[key] = value
    return values


def _build(values: dict[str, float | str], problems: list[str]) -> PrivacySettings | None:
    if problems:
        return None
    try:
        return PrivacySettings(
            mode=cast(PrivacyMode, values["privacy"]),
            noise_multiplier=float(values["dp-noise-multiplier"]),
            target_epsilon=float(values["dp-target-epsilon"]),
            delta=float(values["dp-delta"]),
            clip_norm=float(values["dp-clip-norm"]),
            max_epsilon=float(values["dp-max-epsilon"]),
        )
    except SettingsError as err:
        problems.extend(err.problems)
        return None


def run_privacy(run_config: Config) -> PrivacySettings:
    """The run's privacy settings (defaults: ``DEFAULT_RUN_CONFIG``); raise `SettingsError`."""
    problems: list[str] = []
    values = _read({**DEFAULT_RUN_CONFIG, **run_config}, problems)
    if (
        float(values.get("dp-noise-multiplier", 0)) > 0
        and float(values.get("dp-target-epsilon", 0)) > 0
    ):
        problems.append(
            "both `dp-noise-multiplier` and `dp-target-epsilon` are set in the run config: "
            "give one of them and set the other to 0"
        )
    settings = _build(values, problems)
    if settings is None:
        raise SettingsError(problems)
    return settings


def node_privacy(node_config: Config, run_config: Config) -> PrivacySettings:
    """The run's settings, tightened by the node's own; a weaker node value is refused."""
    run = run_privacy(run_config)
    problems: list[str] = []
    node = _read(node_config, problems)
    values: dict[str, float | str] = {
        "privacy": run.mode,
        "dp-noise-multiplier": run.noise_multiplier,
        "dp-target-epsilon": run.target_epsilon,
        "dp-delta": run.delta,
        "dp-clip-norm": run.clip_norm,
        "dp-max-epsilon": run.max_epsilon,
    }
    for key, value in node.items():
        problem = _weaker(key, value, values[key])
        if problem:
            problems.append(problem)
        values[key] = value
    settings = _build(values, problems)
    if settings is None:
        raise SettingsError(problems)
    return settings


def _weaker(key: str, node: float | str, run: float | str) -> str | None:
    """Why the node's value is weaker than the run's, or None if it is as strict or stricter."""
    fix = f"use a stricter value or remove `{key}` from the node config"
    if key == "privacy":
        if run in ("none", node):
            return None
        return (f"`privacy` is {node!r} in the node config but the run uses {run!r}: a node may "
                f"turn privacy on, not switch or turn off the run's mode; remove `privacy` from "
                "the node config")  # fmt: skip
    assert isinstance(node, float) and isinstance(run, float)
    if key == "dp-noise-multiplier" and node < run:
        return f"`{key}` is {node:g} in the node config, below the run's {run:g}: {fix}"
    if key == "dp-delta" and node > run:
        return f"`{key}` is {node:g} in the node config, above the run's {run:g}: {fix}"
    if key in ("dp-target-epsilon", "dp-max-epsilon") and run > 0 and not 0 < node <= run:
        return (f"`{key}` is {node:g} in the node config (0 = unset) but the run's is {run:g}: "
                f"a node may only lower it; {fix}")  # fmt: skip
    return None


def node_state_dir(node_config: Config, run_config: Config, *, node_name: str) -> Path:
    """Where the node keeps its privacy ledger: node config ``state-dir``, else
    ``<run-dir>/state/<node name>`` (stable across runs, so the ledger carries over)."""
    explicit = node_config.get(STATE_DIR_KEY)
    if explicit:
        return Path(str(explicit)).expanduser()
    run_dir = str({**DEFAULT_RUN_CONFIG, **run_config}["run-dir"])
    return Path(run_dir).expanduser() / "state" / node_name

"""The run config's keys and defaults, the value type Flower carries, and the one settings error.

Torch-free and Flower-free: the ServerApp, the ClientApp, the strategies and the CLI all read
settings against these.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

ConfigValue = bool | int | float | str  # Flower's UserConfigValue
Config = Mapping[str, Any]

# The run config and its defaults, shared by the ServerApp and every ClientApp of a run. This is
# the single source: pyproject.toml's [tool.flwr.app.config] repeats it (a test keeps them equal).
DEFAULT_RUN_CONFIG: dict[str, ConfigValue] = {
    "num-server-rounds": 3,
    "strategy": "flora",
    "base-model": "",
    "target-modules": "all-linear",
    "lora-ranks": "4,8,16",
    "local-steps": 20,
    "batch-size": 8,
    "learning-rate": 0.003,
    "max-length": 128,
    "max-global-rank": 64,
    "recompress-tol": 0.0,
    # Step along the nodes' mean update (flora, flexlora, ffa); 1: plain average (README
    # "Strategies compared").
    "server-lr": 1.0,
    "min-nodes": 2,
    "fraction-train": 1.0,
    "node-wait-s": 120.0,
    "round-timeout-s": 900.0,
    "seed": 0,
    "run-dir": "runs",
    "server-eval-data": "",
    "synth-train-examples": 256,
    "synth-eval-examples": 64,
    # Privacy on the node (client/privacy/settings.py); a node's config may only tighten these.
    "privacy": "none",
    "dp-noise-multiplier": 0.0,
    "dp-target-epsilon": 0.0,
    "dp-delta": 1e-5,
    "dp-clip-norm": 1.0,
    "dp-max-epsilon": 0.0,
    # Reliability (docs/reliability.md): limits on train replies, the round policy, resume.
    "max-client-rank": 256,
    "max-factor-norm": 10000.0,
    "max-examples": 10000000,
    "max-reply-mb": 1024.0,
    "max-lora-scaling": 64.0,
    "min-replies": 1,
    "max-round-retries": 2,
    "resume-from": "",
}


class SettingsError(ValueError):
    """One or more settings are invalid; the message lists every problem and its fix."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("invalid settings:\n  - " + "\n  - ".join(problems))
        self.problems = problems

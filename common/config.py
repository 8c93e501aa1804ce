"""The run config's keys and defaults, the value type Flower carries, the one settings error and
the one config reader.

Torch-free and Flower-free: the ServerApp, the ClientApp, the strategies and the CLI all read
settings against these.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar, cast

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
    # Step along the nodes' mean update (flora, flexlora, ffa); 1: plain average
    # (docs/strategies.md).
    "server-lr": 1.0,
    # FedAvgM's momentum β on that update (flora; docs/federation-value.md); 0: none.
    "server-momentum": 0.0,
    "min-nodes": 2,
    "fraction-train": 1.0,
    # Share of the connected nodes that evaluate each round (seeded sample, at least one).
    "fraction-evaluate": 1.0,
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
    "max-norm-ratio": 0.0,
    "min-replies": 1,
    "max-round-retries": 2,
    "resume-from": "",
    "enrolled-nodes": "",
}


class SettingsError(ValueError):
    """One or more settings are invalid; the message lists every problem and its fix."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("invalid settings:\n  - " + "\n  - ".join(problems))
        self.problems = problems


T = TypeVar("T", int, float, bool, str)
N = TypeVar("N", int, float)
R = TypeVar("R")

_HINTS: dict[type, str] = {
    int: "use an integer",
    float: "use a number",
    bool: "use true or false",
    str: "use text",
}


def problem(key: str, value: object, fix: str) -> str:
    """One settings problem in the house format: the field in backticks, the value, the fix."""
    return f"`{key}` is {value!r}: {fix}"


def _coerce(value: object, kind: type) -> Any:
    """``value`` as ``kind``; raise TypeError/ValueError when it is not one.

    Flower carries TOML values (bool, int, float, str) and the CLI may pass text: an integer is
    an int, an integral float or integer text; a number is an int, a float or number text (never
    a bool); a bool is a bool or "true"/"false"; text is anything, as text.
    """
    if kind is str:
        return str(value)
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        raise TypeError(kind)
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise TypeError(kind)
    if kind is int and isinstance(value, float):
        if not value.is_integer():
            raise TypeError(kind)
        return int(value)
    return kind(value)


class ConfigReader:
    """Typed values from a Flower config (run config, node config, a ``ConfigRecord``).

    Every bad value is recorded in :attr:`problems` as "`key` is value: fix" instead of raised,
    so a user sees all problems at once; :meth:`raise_problems` raises them as one
    :class:`SettingsError`. Readers may share one ``problems`` list (node and run config).

    Parameters
    ----------
    config
        The values to read.
    defaults
        Fallbacks for :meth:`get` (e.g. ``DEFAULT_RUN_CONFIG``).
    problems
        A list to collect problems in (default: a new one).
    """

    def __init__(
        self,
        config: Mapping[str, Any],
        *,
        defaults: Mapping[str, ConfigValue] | None = None,
        problems: list[str] | None = None,
    ) -> None:
        self.config = config
        self.defaults = defaults or {}
        self.problems: list[str] = [] if problems is None else problems

    def optional(
        self, key: str, kind: type[T], hint: str | None = None, *, default: T | None = None
    ) -> T | None:
        """``key`` as ``kind``; ``default`` when absent; None (and a problem) when bad."""
        if key not in self.config:
            return default
        value = self.config[key]
        try:
            return cast(T, _coerce(value, kind))
        except (TypeError, ValueError):
            self.problem(key, value, hint or _HINTS[kind])
            return None

    def get(
        self, key: str, kind: type[T], hint: str | None = None, *, default: T | None = None
    ) -> T:
        """``key`` as ``kind``; when absent or bad (a problem), ``default`` or ``defaults[key]``."""
        value = self.optional(key, kind, hint)
        if value is not None:
            return value
        return default if default is not None else cast(T, _coerce(self.defaults[key], kind))

    def choice(self, key: str, choices: Sequence[str], *, default: str) -> str:
        """``key`` as text that must be one of ``choices``."""
        value = self.get(key, str, default=default)
        if value not in choices:
            self.problem(key, value, f"use one of {', '.join(choices)}")
        return value

    def within(
        self,
        key: str,
        kind: type[N],
        hint: str,
        *,
        low: float | None = None,
        high: float | None = None,
        default: N | None = None,
    ) -> N:
        """``key`` as ``kind`` in [``low``, ``high``] (either bound optional); ``hint`` is the fix
        both for a value of the wrong type and for one out of range."""
        value = self.get(key, kind, hint, default=default)
        if (low is not None and value < low) or (high is not None and value > high):
            self.problem(key, value, hint)
        return value

    def problem(self, key: str, value: object, fix: str) -> None:
        """Record "`key` is value: fix"."""
        self.problems.append(problem(key, value, fix))

    def build(self, make: Callable[..., R], **kwargs: Any) -> R | None:
        """``make(**kwargs)``, or None with its :class:`SettingsError`'s problems recorded."""
        try:
            return make(**kwargs)
        except SettingsError as err:
            self.problems.extend(err.problems)
            return None

    def raise_problems(self) -> None:
        """Raise every problem recorded so far as one :class:`SettingsError`."""
        if self.problems:
            raise SettingsError(self.problems)

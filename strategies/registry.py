"""Strategy names -> classes; an unknown name is an error listing the known ones, not a fallback."""

from __future__ import annotations

from strategies.base import LoraStrategy
from strategies.flora_strategy import FLoRA

STRATEGIES: dict[str, type[LoraStrategy]] = {FLoRA.name: FLoRA}


def strategy_class(name: str) -> type[LoraStrategy]:
    try:
        return STRATEGIES[name]
    except KeyError:
        known = ", ".join(sorted(STRATEGIES))
        raise ValueError(f"`strategy` is {name!r}: use one of {known}") from None

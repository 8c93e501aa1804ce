"""Strategy names -> classes; an unknown name is an error listing the known ones, not a fallback."""

from __future__ import annotations

from common.config import SettingsError
from strategies.flower.base import LoraStrategy
from strategies.flower.fedit import FedIT
from strategies.flower.ffa import FFA
from strategies.flower.flexlora import FlexLoRA
from strategies.flower.flora import FLoRA, FLoRAFresh
from strategies.flower.zeropad import ZeroPad

STRATEGIES: dict[str, type[LoraStrategy]] = {
    cls.name: cls for cls in (FLoRA, FLoRAFresh, FedIT, ZeroPad, FlexLoRA, FFA)
}


def strategy_class(name: str) -> type[LoraStrategy]:
    try:
        return STRATEGIES[name]
    except KeyError:
        known = ", ".join(sorted(STRATEGIES))
        raise SettingsError([f"`strategy` is {name!r}: use one of {known}"]) from None


def check_strategy_options(
    name: str, *, ranks: tuple[int, ...], server_lr: float, server_momentum: float = 0.0
) -> list[str]:
    """What ``strategy`` cannot do with these settings (empty: fine), checked before round 1."""
    cls = STRATEGIES.get(name)
    if cls is None:
        return []
    problems = []
    if not cls.accepts_heterogeneous_ranks and len(set(ranks)) > 1:
        others = ", ".join(
            n for n, c in sorted(STRATEGIES.items()) if c.accepts_heterogeneous_ranks
        )
        text = ",".join(map(str, ranks))
        problems.append(
            f"`lora-ranks` is {text!r}, but `strategy` {name} needs one rank for all nodes: "
            f'give one rank (e.g. lora-ranks = "{max(ranks)}") or use a strategy that accepts '
            f"heterogeneous ranks ({others})"
        )
    if not cls.accepts_server_lr and server_lr != 1.0:
        others = ", ".join(n for n, c in sorted(STRATEGIES.items()) if c.accepts_server_lr)
        problems.append(
            f"`server-lr` is {server_lr:g}, but `strategy` {name} replaces the global adapter by "
            f"a mean of factors and has no update to scale: use server-lr = 1 or one of {others}"
        )
    if not cls.accepts_server_momentum and server_momentum != 0.0:
        others = ", ".join(n for n, c in sorted(STRATEGIES.items()) if c.accepts_server_momentum)
        problems.append(
            f"`server-momentum` is {server_momentum:g}, but `strategy` {name} keeps no server "
            f"momentum: use server-momentum = 0 or one of {others}"
        )
    return problems

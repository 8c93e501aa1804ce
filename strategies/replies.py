"""Checking node replies: a bad reply is a value with a reason, not an exception ending a run."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

from flwr.app import Message

from strategies import protocol as p
from strategies.factors import Factors, LowRank, check_factors, split_factor_keys


@dataclass(frozen=True)
class Rejected:
    """A reply that was not used, and why."""

    node_id: int
    name: str
    reason: str


@dataclass(frozen=True)
class ClientUpdate:
    """One node's validated train reply."""

    node_id: int
    name: str
    factors: dict[str, Factors]
    num_examples: int
    rank: int
    metrics: dict[str, float]
    bytes_up: int

    def signature(self) -> tuple[tuple[str, int, int], ...]:
        """Modules and their (out, in) dims: replies must agree on these to be combined."""
        return tuple((m, b.shape[0], a.shape[1]) for m, (a, b, _) in sorted(self.factors.items()))


@dataclass(frozen=True)
class EvalResult:
    node_id: int
    name: str
    loss: float
    num_examples: int


@dataclass
class Parsed:
    updates: list[ClientUpdate] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)


def _name(msg: Message) -> str:
    if msg.has_content() and p.ADAPTER in msg.content.config_records:
        return str(msg.content.config_records[p.ADAPTER].get(p.NODE_NAME, ""))
    return ""


def _number(msg: Message, key: str) -> float | None:
    metrics = msg.content.metric_records.get(p.METRICS)
    value = None if metrics is None else metrics.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def parse_train_reply(msg: Message) -> ClientUpdate | Rejected:
    """Validate one train reply: LoRA factor pairs only, consistent rank, positive example count."""
    node, name = msg.metadata.src_node_id, _name(msg)
    if msg.has_error():
        return Rejected(node, name, f"node error {msg.error.code}: {msg.error.reason}")
    content = msg.content
    if p.ARRAYS not in content.array_records or p.ADAPTER not in content.config_records:
        return Rejected(node, name, f"reply lacks `{p.ARRAYS}` or `{p.ADAPTER}` records")
    record = content.array_records[p.ARRAYS]
    pairs, problems = split_factor_keys(p.from_record(record))
    num_examples = _number(msg, p.NUM_EXAMPLES)
    rank = content.config_records[p.ADAPTER].get(p.RANK)
    alpha = content.config_records[p.ADAPTER].get(p.ALPHA)
    if num_examples is None or num_examples < 1 or num_examples != int(num_examples):
        problems.append(f"`{p.NUM_EXAMPLES}` must be a positive integer")
    if not isinstance(rank, int) or isinstance(rank, bool) or rank < 1:
        problems.append(f"`{p.RANK}` is {rank!r}: must be an integer >= 1")
    if not isinstance(alpha, int | float) or isinstance(alpha, bool) or not alpha > 0:
        problems.append(f"`{p.ALPHA}` is {alpha!r}: must be a number > 0")
    if not pairs:
        problems.append("reply carries no LoRA factors")
    if problems:
        return Rejected(node, name, "; ".join(problems[:5]))
    assert isinstance(rank, int) and isinstance(alpha, int | float) and num_examples is not None
    factors = _with_scaling(pairs, float(alpha) / rank)
    for module, fac in factors.items():
        problems.extend(check_factors(module, fac, where="reply"))
        if fac[0].shape[0] != rank:
            problems.append(f"module `{module}` has rank {fac[0].shape[0]}, reply says {rank}")
    if problems:
        return Rejected(node, name, "; ".join(problems[:5]))
    metrics = {
        k: float(v)
        for k, v in content.metric_records[p.METRICS].items()
        if isinstance(v, int | float)
    }
    return ClientUpdate(node, name, factors, int(num_examples), rank, metrics, record.count_bytes())


def _with_scaling(pairs: dict[str, LowRank], scaling: float) -> dict[str, Factors]:
    return {m: (a, b, scaling) for m, (a, b) in pairs.items()}


def parse_train_replies(
    replies: Iterable[Message], *, expected: dict[str, tuple[int, int]]
) -> Parsed:
    """Validate all replies and keep those that agree with each other and with ``expected``.

    ``expected`` maps module -> (out, in) of the global adapter (empty in round 1). Among the
    valid replies the largest group sharing one module signature is kept; the others are
    rejected with the reason.
    """
    parsed = Parsed()
    candidates = []
    for msg in replies:
        result = parse_train_reply(msg)
        if isinstance(result, Rejected):
            parsed.rejected.append(result)
        elif not all(
            _fits(m, b.shape[0], a.shape[1], expected) for m, (a, b, _) in result.factors.items()
        ):
            parsed.rejected.append(
                Rejected(
                    result.node_id, result.name, "module shapes differ from the global adapter's"
                )
            )
        else:
            candidates.append(result)
    if candidates:
        majority, _ = Counter(u.signature() for u in candidates).most_common(1)[0]
        for update in candidates:
            if update.signature() == majority:
                parsed.updates.append(update)
            else:
                parsed.rejected.append(
                    Rejected(
                        update.node_id, update.name, "adapted modules differ from the other nodes'"
                    )
                )
    return parsed


def _fits(module: str, out_dim: int, in_dim: int, expected: dict[str, tuple[int, int]]) -> bool:
    return module not in expected or expected[module] == (out_dim, in_dim)


def parse_eval_reply(msg: Message) -> EvalResult | Rejected:
    node, name = msg.metadata.src_node_id, _name(msg)
    if msg.has_error():
        return Rejected(node, name, f"node error {msg.error.code}: {msg.error.reason}")
    loss, count = _number(msg, p.EVAL_LOSS), _number(msg, p.NUM_EXAMPLES)
    if loss is None or count is None or count < 1:
        return Rejected(node, name, f"reply lacks a finite `{p.EVAL_LOSS}` and `{p.NUM_EXAMPLES}`")
    return EvalResult(node, name, loss, int(count))

"""Checking node replies: a bad reply is a value with a reason, not an exception ending a run."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar, cast

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict

from strategies import protocol as p
from strategies.math import packing
from strategies.math import validation as v
from strategies.math.factors import Array, Factors, LowRank, join_factor_keys, split_factor_keys
from strategies.math.validation import ReplyLimits, Shapes

H = TypeVar("H", bound=Hashable)

# Deployment: Flower node id -> the name the operator enrolled that node's key as (None: not
# enrolled by fedlora). Simulation has none: a reply's name is taken as it reports it.
EnrolledNames = Callable[[int], str | None]


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
    """The node name a reply reports ("" when it reports none, or not as a string)."""
    if msg.has_content() and p.ADAPTER in msg.content.config_records:
        name = msg.content.config_records[p.ADAPTER].get(p.NODE_NAME, "")
        return name if isinstance(name, str) else ""  # str() of a list could be any size
    return ""


def identity_problem(msg: Message, enrolled: EnrolledNames | None) -> Rejected | None:
    """A reply whose node name is not the name its Flower node was enrolled as (deployment)."""
    if enrolled is None:
        return None
    node, name = msg.metadata.src_node_id, _name(msg)
    expected = enrolled(node)
    if expected is None:
        return Rejected(node, "", (
            f"Flower node {node} is not enrolled with fedlora (its key was registered outside "
            "`fedlora server invite`/`node join`, or it was revoked): its replies are not used"
        ))  # fmt: skip
    if name != expected:
        return Rejected(node, expected, (
            f"the reply names its node {name[:64]!r}, but Flower node {node} was enrolled as "
            f"{expected!r}: a node may only report the name the operator invited it as"
        ))  # fmt: skip
    return None


def config_size_problem(msg: Message) -> Rejected | None:
    """A reply with a record no fedlora node sends, or whose config records together exceed
    ``MAX_CONFIG_BYTES`` (strategies/protocol.py): refused before anything in them (layout,
    module names) is read."""
    content = msg.content
    problem = p.record_problem({"array": content.array_records, "metric": content.metric_records,
                                "config": content.config_records})  # fmt: skip
    problem = problem or p.config_problem(content.config_records)
    if problem is None:
        return None
    return Rejected(msg.metadata.src_node_id, _name(msg)[:64], problem)


def _metric_problems(msg: Message, limits: ReplyLimits) -> list[str]:
    """Every metric record of a reply: few keys, few bytes, finite numbers."""
    problems = []
    for record_name, record in sorted(msg.content.metric_records.items()):
        problems += v.check_metrics(
            record, nbytes=record.count_bytes(), limits=limits, record=record_name
        )
    return problems


def aggregation_order(update: ClientUpdate) -> tuple[str, int]:
    """The order updates are aggregated and ties are broken in: by node name, then node id.

    Replies arrive in any order; a fixed one makes the result the same in every deployment and
    in simulation.
    """
    return update.name, update.node_id


def majority(values: Sequence[H]) -> H:
    """The most common of ``values``; a tie goes to the value that comes first in ``values``."""
    counts = Counter(values)
    most = max(counts.values())
    return next(value for value in values if counts[value] == most)


@dataclass(frozen=True)
class Expectation:
    """What this round's train replies must match (see :mod:`strategies.math.validation`).

    ``modules`` maps module -> (out, in): the announced module set, or the global adapter's; empty
    means "not known yet" and the largest group of replies with one signature wins.
    ``fingerprint`` is the global adapter's, sent with the instruction; None: not checked.
    ``enrolled``: in deployment, the enrolled name of each Flower node (:func:`identity_problem`).
    """

    limits: ReplyLimits = field(default_factory=ReplyLimits)
    modules: Shapes = field(default_factory=dict)
    fingerprint: str | None = None
    enrolled: EnrolledNames | None = None


def parse_train_reply(msg: Message, expect: Expectation | None = None) -> ClientUpdate | Rejected:
    """Validate one train reply against every rule; all problems found go into one reason."""
    expect = expect or Expectation()
    node, name = msg.metadata.src_node_id, _name(msg)
    if msg.has_error():
        return Rejected(node, name, f"node error {msg.error.code}: {msg.error.reason}")
    oversized = config_size_problem(msg)
    if oversized is not None:
        return oversized
    impostor = identity_problem(msg, expect.enrolled)
    if impostor is not None:
        return impostor
    content = msg.content
    if p.ARRAYS not in content.array_records or p.ADAPTER not in content.config_records:
        return Rejected(node, name, f"reply lacks `{p.ARRAYS}` or `{p.ADAPTER}` records")
    record = content.array_records[p.ARRAYS]
    problems = v.check_size(record.count_bytes(), expect.limits)
    if problems:
        return Rejected(node, name, problems[0])
    adapter = content.config_records[p.ADAPTER]
    pairs, problems = read_factors(record, adapter, expect.modules)
    if expect.modules and pairs:
        problems += v.check_modules(set(pairs), expect.modules)
    metrics = content.metric_records.get(p.METRICS)
    num_examples = None if metrics is None else metrics.get(p.NUM_EXAMPLES)
    problems += v.check_examples(num_examples, max_examples=expect.limits.max_examples)
    problems += _metric_problems(msg, expect.limits)
    rank, alpha = adapter.get(p.RANK), adapter.get(p.ALPHA)
    rank_ok = isinstance(rank, int) and not isinstance(rank, bool) and rank >= 1
    if not rank_ok:
        problems.append(f"`{p.RANK}` is {rank!r}: must be an integer >= 1")
    if not isinstance(alpha, int | float) or isinstance(alpha, bool) or not 0 < alpha < math.inf:
        problems.append(f"`{p.ALPHA}` is {alpha!r}: must be a finite number > 0")
    elif rank_ok:
        assert isinstance(rank, int)
        problems += v.check_scaling(alpha, rank, max_scaling=expect.limits.max_lora_scaling)
    if expect.fingerprint is not None:
        problems += v.check_fingerprint(adapter.get(p.GLOBAL_FINGERPRINT), expect.fingerprint)
    if problems:
        return Rejected(node, name, "; ".join(problems[:5]))
    assert isinstance(rank, int) and isinstance(alpha, int | float)
    return _checked_update(msg, pairs, expect, rank=rank, alpha=float(alpha))


def read_factors(
    record: ArrayRecord, adapter: ConfigRecord, expected: Shapes
) -> tuple[dict[str, LowRank], list[str]]:
    """A reply's flat ``factors`` cut into module -> (A, B) by its declared layout, or problems.

    The vector must be one float32 array; ``layout`` must describe it exactly; the names come
    from ``modules`` (sorted, one per module) or, for ``modules-digest``, from ``expected``, whose
    digest it must equal. (Which modules and shapes are allowed is checked afterwards.)
    """
    flat, problems = p.read_flat(record)
    if flat is None:
        return {}, problems
    layout = adapter.get(p.LAYOUT)
    problems = packing.check_layout(layout, size=int(flat.size))
    if problems:
        return {}, problems
    layout = cast(list[int], layout)  # check_layout: integers >= 1 only
    count = len(layout) // packing.FIELDS
    names, digest = adapter.get(p.MODULES), adapter.get(p.MODULES_DIGEST)
    if (names is None) == (digest is None):
        return {}, [f"`{p.ADAPTER}` must carry either `{p.MODULES}` or `{p.MODULES_DIGEST}`"]
    if digest is not None:
        if not expected or digest != packing.module_digest(expected):
            return {}, [f"`{p.MODULES_DIGEST}` is {str(digest)[:32]!r}, not the digest of the "
                        f"{len(expected)} expected modules: send the module names in full "
                        f"(`{p.MODULES}`)"]  # fmt: skip
        names = sorted(expected)
    problems = packing.check_modules_list(names, count=count)
    if problems:
        return {}, problems
    return packing.unpack(flat, cast(list[str], names), layout), []


def reply_factors(content: RecordDict, expected: Shapes | None = None) -> dict[str, Array]:
    """A train reply's factors under their peft key names (for tools and tests).

    Raises
    ------
    ValueError
        The reply's ``factors`` or layout is malformed (the reason :func:`read_factors` gives).
    """
    if p.ARRAYS not in content.array_records or p.ADAPTER not in content.config_records:
        raise ValueError(f"reply lacks `{p.ARRAYS}` or `{p.ADAPTER}` records")
    record, adapter = content.array_records[p.ARRAYS], content.config_records[p.ADAPTER]
    pairs, problems = read_factors(record, adapter, expected or {})
    if problems:
        raise ValueError("; ".join(problems))
    return join_factor_keys(pairs)


def _checked_update(
    msg: Message, pairs: dict[str, LowRank], expect: Expectation, *, rank: int, alpha: float
) -> ClientUpdate | Rejected:
    """The numeric rules (shapes, finiteness, norms) on a reply whose records are well formed."""
    node, name = msg.metadata.src_node_id, _name(msg)
    problems = v.check_shapes(
        pairs, expect.modules, rank=rank, max_rank=expect.limits.max_client_rank
    )
    problems = problems or v.check_finite(pairs)
    factors = _with_scaling(pairs, alpha / rank)
    problems = problems or v.check_norms(factors, ceiling=expect.limits.max_factor_norm)
    if problems:
        return Rejected(node, name, "; ".join(problems[:5]))
    metrics = {
        k: float(x)
        for k, x in msg.content.metric_records[p.METRICS].items()
        if isinstance(x, int | float)
    }
    nbytes = msg.content.array_records[p.ARRAYS].count_bytes()
    return ClientUpdate(node, name, factors, int(metrics[p.NUM_EXAMPLES]), rank, metrics, nbytes)


def _with_scaling(pairs: dict[str, LowRank], scaling: float) -> dict[str, Factors]:
    return {m: (a, b, scaling) for m, (a, b) in pairs.items()}


def parse_train_replies(replies: Iterable[Message], expect: Expectation | None = None) -> Parsed:
    """Validate all replies and keep those that agree with each other and with ``expect``.

    Among the valid replies the largest group sharing one module signature is kept (it matters
    only while no module set is known; a tie goes to the group of the first node in
    :func:`aggregation_order`); the others are rejected with the reason. Updates come out in
    aggregation order.
    """
    parsed = Parsed()
    candidates = []
    for msg in replies:
        result = parse_train_reply(msg, expect)
        if isinstance(result, Rejected):
            parsed.rejected.append(result)
        else:
            candidates.append(result)
    if candidates:
        candidates.sort(key=aggregation_order)
        kept = majority([u.signature() for u in candidates])
        for update in candidates:
            if update.signature() == kept:
                parsed.updates.append(update)
            else:
                parsed.rejected.append(
                    Rejected(
                        update.node_id, update.name, "adapted modules differ from the other nodes'"
                    )
                )
    return parsed


def screen_updates(
    updates: Sequence[ClientUpdate],
    screen: Callable[[ClientUpdate, Sequence[ClientUpdate]], str | None],
    *,
    max_norm_ratio: float,
) -> tuple[list[ClientUpdate], list[Rejected]]:
    """A strategy's own ``screen`` (``LoraStrategy.screen_update``), then the screen relative
    to the round (`max-norm-ratio`, off at 0); returns the kept updates and the refusals."""
    reasons = [screen(u, updates) for u in updates]
    refused = [Rejected(u.node_id, u.name, r) for u, r in zip(updates, reasons, strict=True) if r]
    usable = [u for u, r in zip(updates, reasons, strict=True) if not r]
    if not max_norm_ratio:  # off: no norms to compute
        return usable, refused
    norms = [v.update_norm(u.factors) for u in usable]
    outliers = v.norm_outliers(norms, ratio=max_norm_ratio)
    refused += [Rejected(u.node_id, u.name, r) for u, r in zip(usable, outliers, strict=True) if r]
    return [u for u, r in zip(usable, outliers, strict=True) if not r], refused


def parse_eval_reply(
    msg: Message, limits: ReplyLimits | None = None, enrolled: EnrolledNames | None = None
) -> EvalResult | Rejected:
    """Validate one evaluation reply like a train reply: its node's enrolled name (deployment),
    bounded, finite metric records, a cross-entropy ``eval-loss`` and a ``num-examples`` within
    `max-examples`."""
    limits = limits or ReplyLimits()
    node, name = msg.metadata.src_node_id, _name(msg)
    if msg.has_error():
        return Rejected(node, name, f"node error {msg.error.code}: {msg.error.reason}")
    oversized = config_size_problem(msg)
    if oversized is not None:
        return oversized
    impostor = identity_problem(msg, enrolled)
    if impostor is not None:
        return impostor
    metrics = msg.content.metric_records.get(p.METRICS)
    if metrics is None:
        return Rejected(node, name, f"reply lacks its `{p.METRICS}` record")
    problems = _metric_problems(msg, limits)
    if not problems:
        loss, count = metrics.get(p.EVAL_LOSS), metrics.get(p.NUM_EXAMPLES)
        problems += v.check_eval_loss(loss, max_loss=limits.max_eval_loss)
        problems += v.check_examples(count, max_examples=limits.max_examples)
    if problems:
        return Rejected(node, name, "; ".join(problems[:3]))
    assert isinstance(loss, int | float) and isinstance(count, int | float)
    return EvalResult(node, name, float(loss), int(count))


def example_weights(updates: Sequence[ClientUpdate]) -> list[float]:
    """FedAvg's weights p_i = n_i / sum_j n_j over the accepted updates."""
    total = sum(u.num_examples for u in updates)
    return [u.num_examples / total for u in updates]


def read_global(arrays: ArrayRecord) -> dict[str, LowRank]:
    """The global adapter in an array record (peft key names), as float64 factors.

    Raises
    ------
    ValueError
        A key is not a LoRA factor or a module lacks one of its two factors.
    """
    pairs, problems = split_factor_keys(p.from_record(arrays))
    if problems:
        raise ValueError("the global adapter is malformed: " + "; ".join(problems[:3]))
    return {
        m: (np.asarray(a, np.float64), np.asarray(b, np.float64)) for m, (a, b) in pairs.items()
    }

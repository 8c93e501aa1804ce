"""The rules a train reply must pass before anything is aggregated, as pure functions.

Each ``check_*`` function returns the problems it finds as sentences naming the field, the value
and the limit (empty: fine). They never raise on hostile input: a bad reply is a value with a
reason. :mod:`strategies.flower.replies` applies them in order to one reply; the round-level rules
(one reply per node, only in answer to this round's instruction) live there too.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from common.config import SettingsError
from strategies.math.factors import Factors

MB = 1 << 20
Shapes = Mapping[str, tuple[int, int]]  # module -> (out, in) of the base layer


@dataclass(frozen=True)
class ReplyLimits:
    """Ceilings a train reply must stay under (run-config keys in backticks).

    The defaults sit far above what honest training produces (see docs/reliability.md) and far
    below what takes over a federation: one reply of 1e30s moves ΔW by 52 orders of magnitude.
    ``max_lora_scaling`` bounds α/r: a node's own scaling multiplies its factors in every
    aggregation, so a tiny A with a huge α hides a huge s·B behind a small product.
    ``max_norm_ratio`` (k, 0: off) refuses an update whose norm is over k times the median of
    the round's valid updates (from 3 updates on): a screen relative to the round, for
    federations whose honest updates are alike. The metric-record caps and ``max_eval_loss``
    are not run-config keys: honest nodes send a dozen numbers and a cross-entropy of a few nats.
    """

    max_client_rank: int = 256
    max_factor_norm: float = 10_000.0
    max_examples: int = 10_000_000
    max_reply_mb: float = 1024.0
    max_lora_scaling: float = 64.0
    max_norm_ratio: float = 0.0
    max_metric_keys: int = 64
    max_metric_kib: float = 64.0
    max_eval_loss: float = 1000.0

    def __post_init__(self) -> None:
        problems = []
        if self.max_client_rank < 1:
            problems.append(f"`max-client-rank` is {self.max_client_rank}: use an integer >= 1")
        if not self.max_factor_norm > 0:
            problems.append(f"`max-factor-norm` is {self.max_factor_norm}: use a number > 0")
        if self.max_examples < 1:
            problems.append(f"`max-examples` is {self.max_examples}: use an integer >= 1")
        if not self.max_reply_mb > 0:
            problems.append(f"`max-reply-mb` is {self.max_reply_mb}: use megabytes > 0")
        if not (math.isfinite(self.max_lora_scaling) and self.max_lora_scaling > 0):
            problems.append(
                f"`max-lora-scaling` is {self.max_lora_scaling}: use a number > 0 (the largest "
                "alpha / r a node may use, e.g. 64)"
            )
        if not (self.max_norm_ratio == 0 or 1 < self.max_norm_ratio < math.inf):
            problems.append(
                f"`max-norm-ratio` is {self.max_norm_ratio}: use 0 (off) or a number > 1, e.g. 10"
            )
        for key, value in (("max_metric_keys", self.max_metric_keys),
                           ("max_metric_kib", self.max_metric_kib),
                           ("max_eval_loss", self.max_eval_loss)):  # fmt: skip
            if not value > 0:
                problems.append(f"`{key}` is {value}: use a number > 0")
        if problems:
            raise SettingsError(problems)

    @property
    def max_reply_bytes(self) -> int:
        return int(self.max_reply_mb * MB)


def fingerprint(arrays: Mapping[str, NDArray[np.floating]], *, salt: str, server_round: int) -> str:
    """SHA-256 of the run's salt, the round and the global adapter as sent (keys, dtypes, bytes).

    Sent in each train instruction's config and echoed in the reply: a reply computed from
    another round's adapter (stale) or another run's (foreign) does not carry it.
    """
    digest = hashlib.sha256(f"{salt}:{server_round}".encode())
    for key in sorted(arrays):
        value = np.ascontiguousarray(arrays[key])
        digest.update(f"{key}:{value.dtype.str}:{value.shape}".encode())
        digest.update(value.tobytes())
    return digest.hexdigest()[:32]


def check_size(nbytes: int, limits: ReplyLimits) -> list[str]:
    if nbytes > limits.max_reply_bytes:
        return [f"reply is {nbytes / MB:.1f} MB, over `max-reply-mb` = {limits.max_reply_mb:g}"]
    return []


def check_dtypes(arrays: Mapping[str, np.ndarray]) -> list[str]:
    """Real floating-point arrays only (no ints, bools, complex, objects)."""
    bad = sorted(k for k, v in arrays.items() if not np.issubdtype(v.dtype, np.floating))
    if bad:
        dtypes = ", ".join(f"`{k}` is {arrays[k].dtype}" for k in bad[:3])
        return [f"factors must be floating point: {dtypes}"]
    return []


def check_modules(modules: set[str], expected: Shapes) -> list[str]:
    """Exactly the expected modules: none missing, none added."""
    problems = []
    extra, missing = sorted(modules - set(expected)), sorted(set(expected) - modules)
    if extra:
        problems.append(f"{len(extra)} unexpected module(s), e.g. `{extra[0]}`")
    if missing:
        problems.append(f"{len(missing)} expected module(s) missing, e.g. `{missing[0]}`")
    return problems


def check_shapes(
    pairs: Mapping[str, tuple[np.ndarray, np.ndarray]],
    expected: Shapes,
    *,
    rank: int,
    max_rank: int,
) -> list[str]:
    """Per module A is (r, in) and B is (out, r), with the reply's one r, 1 <= r <= ``max_rank``.

    (out, in) come from ``expected`` where it names the module, else from the factors themselves.
    """
    if not 1 <= rank <= max_rank:
        return [f"rank {rank} is outside 1..{max_rank} (`max-client-rank`)"]
    problems = []
    for module in sorted(pairs):
        a, b = pairs[module]
        if a.ndim != 2 or b.ndim != 2:
            problems.append(f"module `{module}`: A is {a.shape} and B is {b.shape}; need matrices")
            continue
        out_dim, in_dim = expected.get(module, (b.shape[0], a.shape[1]))
        if a.shape != (rank, in_dim) or b.shape != (out_dim, rank):
            problems.append(
                f"module `{module}`: A is {a.shape} and B is {b.shape}; "
                f"need A {(rank, in_dim)} and B {(out_dim, rank)}"
            )
    return problems[:3]


def check_finite(pairs: Mapping[str, tuple[np.ndarray, np.ndarray]]) -> list[str]:
    bad = [m for m, (a, b) in sorted(pairs.items()) if not (_finite(a) and _finite(b))]
    return [f"module `{bad[0]}` (and {len(bad) - 1} more) has NaN or inf"] if bad else []


def _finite(x: np.ndarray) -> bool:
    return bool(np.isfinite(x).all())


def factor_norms(factors: Factors) -> tuple[float, float, float]:
    """Frobenius norms of A, B and of the scaled update s·B·A, with (r, r) work only.

    ‖B A‖_F² = tr((BᵀB)(A Aᵀ)); computed in float64, so 1e30s overflow to inf, not wrap.
    """
    a, b, scaling = factors
    a64, b64 = np.asarray(a, np.float64), np.asarray(b, np.float64)  # (r, in), (out, r)
    with np.errstate(over="ignore", invalid="ignore"):
        gram = (b64.T @ b64) * (a64 @ a64.T)  # (r, r) elementwise: sum = tr((BᵀB)(AAᵀ))
        product = abs(scaling) * float(np.sqrt(max(float(gram.sum()), 0.0)))
        return float(np.linalg.norm(a64)), float(np.linalg.norm(b64)), product


def _named_norms(factors: Factors) -> dict[str, float]:
    a, b, product = factor_norms(factors)
    scaling = abs(factors[2])
    return {"A": a, "B": b, "s·A": scaling * a, "s·B": scaling * b, "s·B·A": product}


def update_norm(factors: Mapping[str, Factors]) -> float:
    """The largest of ‖A‖, ‖B‖, ‖s·A‖, ‖s·B‖, ‖s·B·A‖ (Frobenius) over an update's modules."""
    return max((max(_named_norms(f).values()) for f in factors.values()), default=0.0)


def norm_outliers(norms: Sequence[float], *, ratio: float) -> list[str | None]:
    """For each update's norm (:func:`update_norm`): why it is over ``ratio`` times the median
    of ``norms``, else None. Off (all None) when ``ratio`` is 0 or there are fewer than 3."""
    if not ratio or len(norms) < 3:
        return [None] * len(norms)
    median = float(np.median(norms))
    return [
        f"update norm {n:.3g} is over `max-norm-ratio` = {ratio:g} times this round's median "
        f"{median:.3g}"
        if n > ratio * median
        else None
        for n in norms
    ]


def check_norms(factors: Mapping[str, Factors], *, ceiling: float) -> list[str]:
    """‖A‖_F, ‖B‖_F, ‖s·A‖_F, ‖s·B‖_F and ‖s·B·A‖_F of every module at most ``ceiling``.

    Each strategy combines one of these: FLoRA stacks s·A beside B, FedIT and zero-padding
    average A and s·B, FlexLoRA and FFA the products; all five are bounded (`max-factor-norm`).
    """
    over = []
    for module in sorted(factors):
        named = _named_norms(factors[module])
        worst = max(named, key=lambda k: -math.inf if math.isnan(named[k]) else named[k])
        if not all(n <= ceiling for n in named.values()):
            over.append((module, worst, named[worst]))
    if over:
        module, which, norm = over[0]
        more = f" (and {len(over) - 1} more)" if len(over) > 1 else ""
        return [f"module `{module}`{more} has a factor norm ‖{which}‖ of {norm:.3g}, "
                f"over `max-factor-norm` = {ceiling:g}"]  # fmt: skip
    return []


def check_scaling(alpha: float, rank: int, *, max_scaling: float) -> list[str]:
    """The reply's LoRA scaling s = α/r at most ``max_scaling`` (`max-lora-scaling`)."""
    scaling = alpha / rank
    if not scaling <= max_scaling:
        return [f"`alpha` / `rank` is {alpha:g} / {rank} = {scaling:.3g}, over "
                f"`max-lora-scaling` = {max_scaling:g}: the node's scaling multiplies its "
                f"factors; set its `lora-alpha` <= {max_scaling * rank:g} or raise "
                "`max-lora-scaling`"]  # fmt: skip
    return []


def check_metrics(
    metrics: Mapping[str, object], *, nbytes: int, limits: ReplyLimits, record: str = "metrics"
) -> list[str]:
    """A metric record of at most ``max_metric_keys`` keys and ``max_metric_kib`` KiB whose
    numbers (scalars or lists) are all finite."""
    if len(metrics) > limits.max_metric_keys:
        return [f"`{record}` has {len(metrics)} keys, over the limit of {limits.max_metric_keys}: "
                "send num-examples, the losses and the privacy figures only"]  # fmt: skip
    if nbytes > limits.max_metric_kib * 1024:
        return [f"`{record}` is {nbytes / 1024:.1f} KiB, over the limit of "
                f"{limits.max_metric_kib:g} KiB"]  # fmt: skip
    for key in sorted(metrics):
        value = metrics[key]
        values = value if isinstance(value, list) else [value]
        for i, x in enumerate(values):
            if isinstance(x, bool) or not isinstance(x, int | float) or not math.isfinite(x):
                where = f"[{i}]" if isinstance(value, list) else ""
                return [f"`{key}`{where} is {x!r} in `{record}`: metrics must be finite numbers"]
    return []


def check_eval_loss(value: object, *, max_loss: float) -> list[str]:
    """``eval-loss`` a finite number in [0, ``max_loss``] (a cross-entropy in nats)."""
    number = value if isinstance(value, int | float) and not isinstance(value, bool) else None
    if number is None or not 0 <= number <= max_loss:
        return [f"`eval-loss` is {value!r}: must be a cross-entropy in [0, {max_loss:g}]"]
    return []


def check_examples(value: object, *, max_examples: int) -> list[str]:
    """``num-examples`` a positive integer (ints or integral floats) <= ``max_examples``."""
    number = value if isinstance(value, int | float) and not isinstance(value, bool) else None
    if number is None or not 1 <= number <= max_examples or number != int(number):
        return [f"`num-examples` is {value!r}: must be an integer in 1..{max_examples} "
                "(`max-examples`)"]  # fmt: skip
    return []


def check_fingerprint(echoed: object, expected: str) -> list[str]:
    if echoed != expected:
        return [f"`global-fingerprint` is {str(echoed)[:16]!r}, not this round's: the reply was "
                "computed from another round's or another run's global adapter"]  # fmt: skip
    return []

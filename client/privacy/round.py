"""A node's privacy round: reserve the release in the ledger, train, confirm it.

One accountant per node for its whole life: every round starts from the ledger on disk (a fresh
accountant per round or per run would under-report ε). Under the ledger's lock the node plans
this round's (σ, q, steps), checks the budget and writes the release as *planned* before
anything is trained; after training it marks it *confirmed*. With ``privacy = none`` nothing is
accounted (a node holding a budget cannot choose ``none``).

DP-SGD's sampling rate q = batch-size / n would tell the server n exactly (through q, ε and the
divisor of the noised gradient), and n ± 1 is what the per-record guarantee is about. So the
node releases its record count once per data set with Gaussian noise, ñ = n + N(0, 20²) (a
per-record release in the ledger), and everything downstream — q = batch-size / ñ, the divisor
q·ñ, ``num-examples`` in the reply, σ calibrated for a target — is computed from ñ: post-
processing of an accounted release.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from opacus.accountants.utils import get_noise_multiplier
from peft import PeftModel

from client.model.loading import lora_factors
from client.privacy.dp_lora import dp_lora_release
from client.privacy.dp_sgd import freeze_lora_a, train_dp_sgd
from client.privacy.ledger import (
    COUNT,
    PLANNED,
    History,
    Ledger,
    data_fingerprint,
    epsilon_of,
    load_ledger,
    locked,
    new_release,
    save_ledger,
)
from client.privacy.noise import SecureRandom
from client.privacy.settings import PrivacySettings, node_privacy, node_state_dir
from client.settings import TrainConfig
from client.training import TrainResult, train_local
from common.config import DEFAULT_RUN_CONFIG, Config, SettingsError
from strategies import protocol as p
from strategies.math.factors import B_SUFFIX

# Noise multiplier of the record-count release (sensitivity 1): RDP α/800, about 0.003 to 0.006
# added to a typical DP-SGD ε; ñ is within ±40 of n with 95 % probability.
COUNT_NOISE_MULTIPLIER = 20.0


class BudgetExceededError(RuntimeError):
    """This round would take the node's data set past its ``dp-max-epsilon``."""


@dataclass(frozen=True)
class PrivacyRound:
    """One round's release: its (σ, q, steps), the ledger with it reserved, and its id."""

    settings: PrivacySettings
    state_dir: Path
    ledger: Ledger
    noise_multiplier: float
    sample_rate: float
    steps: int
    release_id: str = ""

    @property
    def expected_batch_size(self) -> float:
        """q·ñ, DP-SGD's divisor of the noised sum (public: computed from ñ)."""
        return self.sample_rate * float(self.ledger.noised_count or 1)

    def reserve(self, server_round: int) -> PrivacyRound:
        """This plan with its release appended to the ledger as planned (spent from now on)."""
        release = new_release(
            self.settings.mode,
            noise_multiplier=self.noise_multiplier,
            sample_rate=self.sample_rate,
            steps=self.steps,
            server_round=server_round,
            status=PLANNED,
        )
        return replace(self, ledger=self.ledger.with_release(release), release_id=release.id)


def calibrate(
    settings: PrivacySettings, *, sample_rate: float, steps: int, prior: History | None = None
) -> float:
    """σ: the given ``dp-noise-multiplier``, or opacus's calibration of ``dp-target-epsilon``
    for ``steps`` steps at ``sample_rate`` (the larger when a node set both). With ``prior``
    (the noised count release), σ is raised until ``prior`` and the planned steps together
    stay within the target."""
    sigma = settings.noise_multiplier
    if settings.target_epsilon > 0:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            try:
                calibrated = get_noise_multiplier(
                    target_epsilon=settings.target_epsilon,
                    target_delta=settings.delta,
                    sample_rate=sample_rate,
                    steps=steps,
                    accountant="rdp",
                )
            except ValueError as err:  # opacus: "The privacy budget is too low."
                raise SettingsError(
                    [
                        f"`dp-target-epsilon` is {settings.target_epsilon:g}: no noise multiplier "
                        f"up to 1e6 reaches it over {steps} steps at q={sample_rate:.3g} ({err}); "
                        "raise the target or plan fewer rounds or steps"
                    ]
                ) from err
        sigma = max(sigma, float(calibrated))
        if prior:
            sigma = _raise_for_prior(sigma, settings, sample_rate=sample_rate, steps=steps,
                                     prior=prior)  # fmt: skip
    return sigma


def _raise_for_prior(
    sigma: float, settings: PrivacySettings, *, sample_rate: float, steps: int, prior: History
) -> float:
    """The smallest σ' >= σ (to 0.1 %) with ε(prior + (σ', q, steps)) <= the target."""

    def fits(s: float) -> bool:
        history = [*prior, (s, sample_rate, steps)]
        return epsilon_of(history, delta=settings.delta) <= settings.target_epsilon

    if fits(sigma):
        return sigma
    low, high = sigma, 2 * sigma
    while not fits(high):
        low, high = high, 2 * high
        if high > 1e6:
            target = settings.target_epsilon
            raise SettingsError([f"`dp-target-epsilon` is {target:g}: the noised record "
                                 "count alone spends it; raise the target"])  # fmt: skip
    while high - low > 1e-3 * high:
        mid = (low + high) / 2
        low, high = (low, mid) if fits(mid) else (mid, high)
    return high


def with_noised_count(ledger: Ledger, n: int) -> Ledger:
    """The ledger with its data set's noised record count ñ = n + N(0, 20²), drawn (and
    recorded as a per-record release) the first time only; later rounds reuse it."""
    if ledger.noised_count is not None:
        return ledger
    draw = float(SecureRandom().normal(0.0, COUNT_NOISE_MULTIPLIER, size=1)[0])
    release = new_release(COUNT, noise_multiplier=COUNT_NOISE_MULTIPLIER, sample_rate=1.0,
                          steps=1, server_round=0)  # fmt: skip
    return replace(ledger.with_release(release), noised_count=max(1, round(n + draw)))


def plan_round(
    settings: PrivacySettings,
    *,
    state_dir: Path,
    ledger: Ledger,
    train: TrainConfig,
    num_rounds: int,
) -> PrivacyRound:
    """Fix this round's (σ, q, steps) from the settings and the ledger (its ñ for dp-sgd).

    dp-sgd: q = batch-size / ñ, ``local-steps`` steps, σ calibrated for ``num-server-rounds`` ×
    ``local-steps``. dp-lora: one Gaussian release per round (q = 1, no amplification: the
    server sees every release), σ calibrated for ``num-server-rounds`` releases.
    """
    if settings.mode == "dp-sgd":
        n = ledger.noised_count
        assert n is not None, "dp-sgd plans from the noised count"
        if settings.delta >= 1 / n:
            raise SettingsError([f"`dp-delta` is {settings.delta:g} but the node holds about {n} "
                                 f"records: use a δ well below 1/n = {1 / n:.2g}"])  # fmt: skip
        q, steps, planned = min(1.0, train.batch_size / n), train.local_steps, train.local_steps
    else:
        q, steps, planned = 1.0, 1, 1
    prior = [(r.noise_multiplier, r.sample_rate, r.steps) for r in ledger.releases
             if r.mode == COUNT]  # fmt: skip
    sigma = calibrate(settings, sample_rate=q, steps=planned * num_rounds, prior=prior)
    return PrivacyRound(settings, state_dir, ledger, sigma, q, steps)


def check_budget(plan: PrivacyRound, *, server_round: int) -> None:
    """Raise :class:`BudgetExceededError` if this round would exceed ``dp-max-epsilon``
    (per record: every release of the data set, planned ones included)."""
    budget = plan.settings.max_epsilon
    if budget <= 0:
        return
    spent, after = plan.ledger.epsilon(), plan.reserve(server_round).ledger.epsilon()
    if after > budget:
        raise BudgetExceededError(
            f"privacy budget: this round would take ε per record from {spent:.3f} to "
            f"{after:.3f} (δ={plan.settings.delta:g}), over `dp-max-epsilon` = {budget:g}; the "
            f"node trains nothing and declines (ledger {plan.state_dir}). Only the data owner "
            "may raise the budget in the node config."
        )


def train_private(
    plan: PrivacyRound | None,
    model: PeftModel,
    rows: Sequence[list[int]],
    config: TrainConfig,
    *,
    pad_id: int,
    seed: int,
) -> tuple[TrainResult, dict[str, NDArray[np.float32]]]:
    """Train as the round's mode says; return the result and the factors that may leave."""
    if plan is None:
        return train_local(model, rows, config, pad_id=pad_id, seed=seed), lora_factors(model)
    s = plan.settings
    if s.mode == "dp-sgd":
        result = train_dp_sgd(
            model,
            rows,
            config,
            noise_multiplier=plan.noise_multiplier,
            clip_norm=s.clip_norm,
            sample_rate=plan.sample_rate,
            expected_batch_size=plan.expected_batch_size,
            pad_id=pad_id,
        )
        return result, lora_factors(model)
    freeze_lora_a(model)
    # B's start is public (zero, or derived from the global adapter): only the change is private.
    start = {k: v for k, v in lora_factors(model).items() if k.endswith(B_SUFFIX)}
    result = train_local(model, rows, config, pad_id=pad_id, seed=seed)
    factors = lora_factors(model)
    noised, _ = dp_lora_release(
        {k: factors[k] - b0 for k, b0 in start.items()},
        clip_norm=s.clip_norm,
        noise_multiplier=plan.noise_multiplier,
        rng=SecureRandom(),  # 256 fresh bits per release: the server must not know the noise
    )
    return result, {**factors, **{k: start[k] + noised[k] for k in start}}


def commit(plan: PrivacyRound) -> Ledger:
    """Mark the round's planned release confirmed (before the reply leaves the node); return
    the ledger as it stands now, other processes' releases included."""
    with locked(plan.state_dir):
        ledger = load_ledger(plan.state_dir, fingerprint=plan.ledger.fingerprint,
                             delta=plan.settings.delta).confirmed(plan.release_id)  # fmt: skip
        save_ledger(plan.state_dir, ledger)
    return ledger


def reply_fields(mode: str, ledger: Ledger | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """(metrics, config) for the train reply: cumulative ledger figures and the mode.

    ε per record always; ε per institution only where the data set has that guarantee
    (:meth:`Ledger.institution_epsilon`).
    """
    config: dict[str, Any] = {p.DP_MODE: mode}
    if ledger is None or not ledger.releases:
        return {}, config
    last = next(r for r in reversed(ledger.releases) if r.mode != COUNT)
    metrics: dict[str, Any] = {
        p.DP_EPSILON_RECORD: ledger.epsilon(),
        p.DP_DELTA: ledger.delta,
        p.DP_NOISE_MULTIPLIER: last.noise_multiplier,
        p.DP_SAMPLE_RATE: last.sample_rate,
        p.DP_STEPS: ledger.steps,
    }
    institution = ledger.institution_epsilon()
    if institution is not None:
        metrics[p.DP_EPSILON_INSTITUTION] = institution
    history = ledger.history()
    if len(history) > 1:  # σ or q changed at some point: the whole history, as opacus keeps it
        config[p.DP_HISTORY] = [float(x) for entry in history for x in entry]
    return metrics, config


def begin_round(
    node_config: Config,
    run_config: Config,
    *,
    node_name: str,
    texts: Sequence[str],
    train: TrainConfig,
) -> PrivacyRound | None:
    """Settings, then under the ledger's lock: plan, budget guard, and the release written
    ahead as planned. None with ``privacy=none``.

    Raises before any training: `SettingsError` (weaker or impossible settings),
    `LedgerError` (damaged or foreign ledger), :class:`BudgetExceededError`. The noised count
    (dp-sgd) is recorded even when the round is then declined: the decline depends on it.
    """
    settings = node_privacy(node_config, run_config)
    if not settings.enabled:
        return None
    if not texts:
        raise ValueError("the node has no training examples: add records to train.jsonl")
    run = {**DEFAULT_RUN_CONFIG, **run_config}
    state_dir = node_state_dir(node_config, run_config, node_name=node_name)
    with locked(state_dir):
        ledger = load_ledger(state_dir, fingerprint=data_fingerprint(texts), delta=settings.delta)
        if settings.mode == "dp-sgd" and ledger.noised_count is None:
            ledger = with_noised_count(ledger, len(texts))
            save_ledger(state_dir, ledger)
        plan = plan_round(settings, state_dir=state_dir, ledger=ledger, train=train,
                          num_rounds=int(run["num-server-rounds"]))  # fmt: skip
        check_budget(plan, server_round=train.server_round)
        plan = plan.reserve(train.server_round)
        save_ledger(state_dir, plan.ledger)
    return plan

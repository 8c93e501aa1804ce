"""A node's privacy round: plan the release, guard the budget, train, record it in the ledger.

One accountant per node for its whole life: every round starts from the ledger on disk (a fresh
accountant per round or per run would under-report ε), the budget is checked *before* anything
is trained, and the release is written to the ledger before the reply leaves the node. With
``privacy = none`` nothing is accounted (a node holding a budget cannot choose ``none``).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from opacus.accountants.utils import get_noise_multiplier
from peft import PeftModel

from client.model.loading import lora_factors
from client.privacy.dp_lora import dp_lora_release
from client.privacy.dp_sgd import freeze_lora_a, train_dp_sgd
from client.privacy.ledger import Ledger, data_fingerprint, load_ledger, new_release, save_ledger
from client.privacy.settings import PrivacySettings, node_privacy, node_state_dir
from client.settings import TrainConfig
from client.training import TrainResult, train_local
from common.config import DEFAULT_RUN_CONFIG, Config, SettingsError
from strategies import protocol as p
from strategies.math.factors import B_SUFFIX


class BudgetExceededError(RuntimeError):
    """This round would take the node's data set past its ``dp-max-epsilon``."""


@dataclass(frozen=True)
class PrivacyRound:
    """One round's planned release, and the ledger as it stood before it."""

    settings: PrivacySettings
    state_dir: Path
    ledger: Ledger
    noise_multiplier: float
    sample_rate: float
    steps: int

    def after(self, server_round: int) -> Ledger:
        release = new_release(
            self.settings.mode,
            noise_multiplier=self.noise_multiplier,
            sample_rate=self.sample_rate,
            steps=self.steps,
            server_round=server_round,
        )
        return self.ledger.with_release(release)


def calibrate(settings: PrivacySettings, *, sample_rate: float, steps: int) -> float:
    """σ: the given ``dp-noise-multiplier``, or opacus's calibration of ``dp-target-epsilon``
    for ``steps`` steps at ``sample_rate`` (the larger when a node set both)."""
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
    return sigma


def plan_round(
    settings: PrivacySettings,
    *,
    state_dir: Path,
    texts: Sequence[str],
    train: TrainConfig,
    num_rounds: int,
) -> PrivacyRound:
    """Read the ledger and fix this round's (σ, q, steps).

    dp-sgd: q = batch-size / n, ``local-steps`` steps, σ calibrated for ``num-server-rounds`` ×
    ``local-steps``. dp-lora: one Gaussian release per round (q = 1, no amplification: the
    server sees every release), σ calibrated for ``num-server-rounds`` releases.
    """
    if not texts:
        raise ValueError("the node has no training examples: add records to train.jsonl")
    n = len(texts)
    if settings.mode == "dp-sgd":
        if settings.delta >= 1 / n:
            raise SettingsError([f"`dp-delta` is {settings.delta:g} but the node holds {n} "
                                 f"records: use a δ well below 1/n = {1 / n:.2g}"])  # fmt: skip
        q, steps, planned = min(1.0, train.batch_size / n), train.local_steps, train.local_steps
    else:
        q, steps, planned = 1.0, 1, 1
    sigma = calibrate(settings, sample_rate=q, steps=planned * num_rounds)
    ledger = load_ledger(state_dir, fingerprint=data_fingerprint(texts), delta=settings.delta)
    return PrivacyRound(settings, state_dir, ledger, sigma, q, steps)


def check_budget(plan: PrivacyRound, *, server_round: int) -> None:
    """Raise :class:`BudgetExceededError` if this round would exceed ``dp-max-epsilon``."""
    budget = plan.settings.max_epsilon
    if budget <= 0:
        return
    spent, after = plan.ledger.epsilon(), plan.after(server_round).epsilon()
    if after > budget:
        raise BudgetExceededError(
            f"privacy budget: this round would take ε from {spent:.3f} to {after:.3f} "
            f"(δ={plan.settings.delta:g}), over `dp-max-epsilon` = {budget:g}; the node trains "
            f"nothing and declines (ledger {plan.state_dir}). Only the data owner may raise the "
            "budget in the node config."
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
        rng=np.random.default_rng(),  # OS entropy: the server must not know the noise
    )
    return result, {**factors, **{k: start[k] + noised[k] for k in start}}


def commit(plan: PrivacyRound, *, server_round: int) -> Ledger:
    """Write the round's release to the ledger (before the reply leaves the node)."""
    ledger = plan.after(server_round)
    save_ledger(plan.state_dir, ledger)
    return ledger


def reply_fields(mode: str, ledger: Ledger | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """(metrics, config) for the train reply: cumulative ledger figures and the mode."""
    config: dict[str, Any] = {p.DP_MODE: mode}
    if ledger is None or not ledger.releases:
        return {}, config
    last = ledger.releases[-1]
    metrics: dict[str, Any] = {
        p.DP_EPSILON: ledger.epsilon(),
        p.DP_DELTA: ledger.delta,
        p.DP_NOISE_MULTIPLIER: last.noise_multiplier,
        p.DP_SAMPLE_RATE: last.sample_rate,
        p.DP_STEPS: ledger.steps,
    }
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
    """Settings, ledger and budget guard for one train instruction; None with ``privacy=none``.

    Raises before any training: `SettingsError` (weaker or impossible settings),
    `LedgerError` (damaged or foreign ledger), :class:`BudgetExceededError`.
    """
    settings = node_privacy(node_config, run_config)
    if not settings.enabled:
        return None
    run = {**DEFAULT_RUN_CONFIG, **run_config}
    plan = plan_round(
        settings,
        state_dir=node_state_dir(node_config, run_config, node_name=node_name),
        texts=texts,
        train=train,
        num_rounds=int(run["num-server-rounds"]),
    )
    check_budget(plan, server_round=train.server_round)
    return plan

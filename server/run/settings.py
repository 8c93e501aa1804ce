"""Typed server settings, read once from Flower's run config; every problem reported at once."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from client.privacy.settings import PrivacySettings, run_privacy
from client.settings import TrainConfig, parse_ranks
from common.config import DEFAULT_RUN_CONFIG, ConfigReader, ConfigValue, SettingsError
from server.run.checkpoint import CHECKPOINT_FILE
from strategies.flower.rounds import RoundPolicy
from strategies.math.validation import ReplyLimits
from strategies.options import AggregationOptions, Federation
from strategies.registry import STRATEGIES, check_strategy_options


@dataclass(frozen=True)
class ServerSettings:
    """Everything the ServerApp needs; built by :func:`server_settings` (defaults: run config)."""

    num_rounds: int
    strategy: str
    base_model: str
    target_modules: str
    lora_ranks: tuple[int, ...]
    train: TrainConfig
    federation: Federation
    aggregation: AggregationOptions
    round_timeout_s: float
    run_dir: Path
    server_eval_data: Path | None
    # What the run suggests to the nodes; a node may only tighten it (client/privacy/settings.py).
    privacy: PrivacySettings
    limits: ReplyLimits = field(default_factory=ReplyLimits)
    policy: RoundPolicy = field(default_factory=RoundPolicy)
    # A run folder to continue from its checkpoint (server/run/checkpoint.py), or None.
    resume_from: Path | None = None
    # Deployment: the operator's map of enrolled names (server/run/identities.py); None in
    # simulation, where a reply's node name is taken as reported.
    enrolled_nodes: Path | None = None
    # The whole run config (defaults filled in): what a checkpoint compares on resume.
    run_config: Mapping[str, ConfigValue] = field(default_factory=dict)


KNOWN_KEYS = frozenset(DEFAULT_RUN_CONFIG)


def server_settings(run_config: Mapping[str, ConfigValue]) -> ServerSettings:
    """Build :class:`ServerSettings` from a Flower run config; raise :class:`SettingsError`."""
    unknown = sorted(set(run_config) - KNOWN_KEYS)
    r = ConfigReader({**DEFAULT_RUN_CONFIG, **run_config}, defaults=DEFAULT_RUN_CONFIG)
    if unknown:
        r.problems.append(
            f"unknown run-config key(s) {unknown}: use the keys of [tool.flwr.app.config] "
            f"({', '.join(sorted(KNOWN_KEYS))})"
        )
    name = r.choice("strategy", sorted(STRATEGIES), default=str(DEFAULT_RUN_CONFIG["strategy"]))
    ranks = parse_ranks(str(DEFAULT_RUN_CONFIG["lora-ranks"]))
    try:
        ranks = parse_ranks(r.get("lora-ranks", str, "comma-separated integers"))
    except SettingsError as err:
        r.problems.extend(err.problems)
    seed = r.get("seed", int, "use an integer")
    train = r.build(
        TrainConfig,
        local_steps=r.get("local-steps", int, "use an integer >= 1"),
        batch_size=r.get("batch-size", int, "use an integer >= 1"),
        learning_rate=r.get("learning-rate", float, "use a number in (0, 1)"),
        max_length=r.get("max-length", int, "use an integer >= 1"),
        seed=seed,
    )
    federation = r.build(
        Federation,
        min_nodes=r.get("min-nodes", int, "use an integer >= 1"),
        fraction_train=r.get("fraction-train", float, "use a value in (0, 1]"),
        fraction_evaluate=r.get("fraction-evaluate", float, "use a value in (0, 1]"),
        node_wait_s=r.get("node-wait-s", float, "use seconds > 0"),
        seed=seed,
    )
    cap = r.get("max-global-rank", int, "use an integer >= 1 (0: no cap)")
    aggregation = r.build(
        AggregationOptions,
        max_global_rank=cap or None,
        recompress_tol=r.get("recompress-tol", float, "use a value in [0, 1)"),
        server_lr=r.get("server-lr", float, "use a number > 0"),
        server_momentum=r.get("server-momentum", float, "use a value in [0, 1)"),
    )
    if aggregation is not None:
        r.problems += check_strategy_options(
            name,
            ranks=ranks,
            server_lr=aggregation.server_lr,
            server_momentum=aggregation.server_momentum,
        )
    rounds = r.within("num-server-rounds", int, "use an integer >= 1", low=1)
    timeout = r.get("round-timeout-s", float, "use seconds > 0")
    if not timeout > 0:
        r.problem("round-timeout-s", timeout, "use seconds > 0")
    eval_data = r.get("server-eval-data", str, "a JSONL file path or empty")
    if eval_data and not Path(eval_data).expanduser().is_file():
        r.problems.append(
            f"`server-eval-data` is {eval_data!r}, which is not a file: "
            "give a JSONL file the server holds, or leave it empty"
        )
    limits, policy, resume_from = _reliability(r, timeout)
    enrolled = r.get("enrolled-nodes", str, "the operator's enrolled-nodes.json or empty")
    if enrolled and not Path(enrolled).is_file():
        r.problems.append(
            f"`enrolled-nodes` is {enrolled!r}, which is not a file: `fedlora run` sets it to "
            "the federation's enrolled-nodes.json (written by `fedlora server start`); leave it "
            "empty in simulation"
        )
    privacy = r.build(run_privacy, run_config=r.config) or PrivacySettings()
    r.raise_problems()
    assert train is not None and federation is not None and aggregation is not None
    assert limits is not None and policy is not None
    return ServerSettings(
        num_rounds=rounds,
        strategy=_effective_strategy(name, privacy.mode),
        base_model=r.get("base-model", str, "a model directory or hub id"),
        target_modules=r.get("target-modules", str, "module names"),
        lora_ranks=ranks,
        train=train,
        federation=federation,
        aggregation=aggregation,
        round_timeout_s=timeout,
        # Absolute: Flower's detached SuperLink runs apps in the folder it was first started from.
        run_dir=Path(r.get("run-dir", str, "a folder path")).expanduser().resolve(),
        server_eval_data=Path(eval_data).expanduser().resolve() if eval_data else None,
        privacy=privacy,
        limits=limits,
        policy=policy,
        resume_from=resume_from,
        enrolled_nodes=Path(enrolled).resolve() if enrolled else None,
        run_config=dict(r.config),
    )


def _effective_strategy(name: str, privacy_mode: str) -> str:
    """The strategy that runs: ``flora`` under dp-lora is the paper's ``flora-fresh``.

    Continuing nodes would carry every round's noised B into their next start, and the global
    factors grew until every reply failed `max-factor-norm` (measured: by round 4). With a fresh
    B = 0 each round, each release's noise stays in its own stacked block.
    """
    return "flora-fresh" if name == "flora" and privacy_mode == "dp-lora" else name


def _reliability(
    r: ConfigReader, timeout: float
) -> tuple[ReplyLimits | None, RoundPolicy | None, Path | None]:
    """Reply limits, round policy and the run folder to resume (docs/reliability.md)."""
    limits = r.build(
        ReplyLimits,
        max_client_rank=r.get("max-client-rank", int, "use an integer >= 1"),
        max_factor_norm=r.get("max-factor-norm", float, "use a number > 0"),
        max_examples=r.get("max-examples", int, "use an integer >= 1"),
        max_reply_mb=r.get("max-reply-mb", float, "use megabytes > 0"),
        max_lora_scaling=r.get("max-lora-scaling", float, "use a number > 0"),
        max_norm_ratio=r.get("max-norm-ratio", float, "use 0 (off) or a number > 1"),
    )
    policy = r.build(
        RoundPolicy,
        min_replies=r.get("min-replies", int, "use an integer >= 1"),
        max_round_retries=r.get("max-round-retries", int, "use an integer >= 0"),
        round_timeout_s=timeout if timeout > 0 else 1.0,  # a bad timeout is reported above
    )
    resume = r.get("resume-from", str, "a run folder path or empty")
    if not resume:
        return limits, policy, None
    path = Path(resume).expanduser().resolve()
    if not (path / CHECKPOINT_FILE).is_file():
        r.problems.append(
            f"`resume-from` is {resume!r}, which holds no {CHECKPOINT_FILE}: give the run folder "
            "of an earlier run (it is written after each completed round), or leave it empty"
        )
    return limits, policy, path

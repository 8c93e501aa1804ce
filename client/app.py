"""The fedlora ClientApp: one institution's node.

Each message may run in a fresh process, so nothing is kept between rounds in module globals:
the node is stateless for FLoRA (the global adapter arrives with every message). The loaded base
model is kept across messages in the process (client/model/cache.py): losing it costs only time.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Error, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from numpy.typing import NDArray
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from client.data.records import load_node_texts
from client.model import cache as base_cache
from client.model import phases
from client.model.loading import pick_device, pick_dtype
from client.model.node_mode import NodeMode, start_lora
from client.model.personal import attach_personal, has_personal, personal_mode, save_personal
from client.privacy.ledger import Ledger, LedgerError
from client.privacy.releases import select
from client.privacy.round import (
    BudgetExceededError,
    PrivacyRound,
    begin_round,
    commit,
    reply_fields,
    train_private,
)
from client.privacy.settings import PrivacyMode, node_privacy, node_state_dir
from client.settings import NodeSettings, TrainConfig, node_settings
from client.training import TrainResult, encode, evaluate_loss
from common.config import SettingsError
from strategies import protocol as p

app = ClientApp()

ERROR_BAD_INPUT = 400
ERROR_PRIVACY = 403  # the node declines: privacy budget spent, or its ledger needs a person


def derive_seed(seed: int, server_round: int, node: str) -> int:
    """A per-(run seed, round, node) seed, stable across processes and machines."""
    return zlib.crc32(f"{seed}:{server_round}:{node}".encode())


def _settings(context: Context) -> NodeSettings:
    threads = context.node_config.get("num-threads")
    if isinstance(threads, int) and threads > 0:
        torch.set_num_threads(threads)
    return node_settings(context.node_config, context.run_config)


def _reply_or_error(
    handler: Callable[[Message, Context], RecordDict],
) -> Callable[[Message, Context], Message]:
    """Turn configuration and data errors into an error reply that names the problem."""

    def wrapped(msg: Message, context: Context) -> Message:
        try:
            content = handler(msg, context)
        except (SettingsError, ValueError, FileNotFoundError) as err:
            return Message(Error(code=ERROR_BAD_INPUT, reason=str(err)), reply_to=msg)
        except (BudgetExceededError, LedgerError) as err:
            return Message(Error(code=ERROR_PRIVACY, reason=str(err)), reply_to=msg)
        finally:
            base_cache.release()  # the base model back to the cache, restored (or dropped)
        return Message(content, reply_to=msg)

    wrapped.__name__ = handler.__name__
    return wrapped


@dataclass(frozen=True)
class _Job:
    """What every instruction starts from: the node's settings and the base model with the
    global adapter applied (client/model/cache.py)."""

    settings: NodeSettings
    config: TrainConfig
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase


def _prepare(
    msg: Message,
    context: Context,
    *,
    arrays: dict[str, NDArray[np.floating]] | None,
    merge_only: bool = False,
) -> _Job:
    settings = _settings(context)
    config = TrainConfig.from_config(dict(msg.content.config_records[p.CONFIG]))
    device = pick_device(settings.device)
    model, tokenizer = base_cache.checkout(  # kept across messages; restored after each one
        settings.base_model,
        device=device,
        dtype=pick_dtype(settings.dtype, device),
        gradient_checkpointing=settings.gradient_checkpointing,
        quantization=settings.quantization,
        spread=settings.device == "auto",
        global_adapter=arrays,  # merged as peft merges it, or kept beside low-precision weights
        merge_only=merge_only,
    )
    return _Job(settings, config, model, tokenizer)


def _global_adapter(msg: Message) -> dict[str, NDArray[np.floating]]:
    """The instruction's global adapter: read-only views of the message's bytes (reading it
    counts as applying it: the node log's ``apply``). Every instruction carries it and `config`;
    the first thing a message does is this check."""
    content = msg.content
    if p.CONFIG not in content.config_records or p.ARRAYS not in content.array_records:
        raise ValueError(f"instruction lacks `{p.CONFIG}` or `{p.ARRAYS}`: server and node "
                         "run different fedlora versions")  # fmt: skip
    with phases.phase("apply"):
        return p.view_record(msg.content.array_records[p.ARRAYS])


def run_train(msg: Message, context: Context) -> RecordDict:
    """Start the node's LoRA as the strategy says (merge + fresh, or continue from the global
    factors), train it, return only its factors."""
    mode = NodeMode.from_config(dict(msg.content.config_records.get(p.CONFIG, {})))
    arrays = _global_adapter(msg)
    # merge: the whole global merged; continue-merged: merged where the weights allow, the node's
    # first components then taken back out; continue: the node trains the global factors
    # (client/model/node_mode.py)
    merged = mode.merges or mode.mode == p.CONTINUE_MERGED
    job = _prepare(msg, context, arrays=arrays if merged else None,
                   merge_only=mode.mode == p.CONTINUE_MERGED)  # fmt: skip
    settings, config = job.settings, job.config
    train_texts, _ = load_node_texts(settings)
    plan = begin_round(  # privacy settings, ledger and budget guard: before any training
        context.node_config,
        context.run_config,
        node_name=settings.name,
        texts=train_texts,
        train=config,
    )
    seed = derive_seed(config.seed, config.server_round, settings.name)
    peft_model = start_lora(  # as the strategy's instruction says (client/model/node_mode.py)
        job.model,
        {} if mode.merges else arrays,
        mode=mode,
        rank=settings.lora_rank,
        alpha=settings.lora_alpha,
        target_modules=settings.target_modules,
        seed=seed,
        public_a_seed=_public_a_seed(plan, config, mode),
        keep_layers=not (plan and plan.settings.mode == "dp-sgd"),  # opacus wraps fresh layers
    )
    state_dir = _personal_dir(context, settings)  # None: no private LoRA (client/model/personal.py)
    if state_dir is not None:
        attach_personal(peft_model, state_dir, seed=seed + 1, freeze_a=mode.freeze_a)
    rows = encode(train_texts, job.tokenizer, max_length=config.max_length)
    pad_id = job.tokenizer.pad_token_id
    result, factors = train_private(plan, peft_model, rows, config, pad_id=pad_id, seed=seed)
    ledger = commit(plan) if plan else None  # the release was reserved before training
    if state_dir is not None:
        save_personal(peft_model, state_dir)  # stays on the node; `factors` are the shared LoRA
    return _train_reply(plan.settings.mode if plan else "none", result, factors, ledger=ledger,
                        config=config, msg=msg, settings=settings)  # fmt: skip


def _train_reply(
    mode: PrivacyMode,
    result: TrainResult,
    factors: dict[str, NDArray[np.float32]],
    *,
    ledger: Ledger | None,
    config: TrainConfig,
    msg: Message,
    settings: NodeSettings,
) -> RecordDict:
    """Every record through the mode's table (client/privacy/releases.py): nothing else leaves."""
    dp_metrics, dp_config = reply_fields(mode, ledger)
    if mode == "dp-sgd":  # ñ, the noised record count, never n itself
        examples = ledger.noised_count if ledger is not None else None
    elif mode == "dp-lora":  # public: the instruction's planned work
        examples = config.batch_size * config.local_steps
    else:
        examples = result.num_examples
    metrics: dict[str, Any] = {
        p.NUM_EXAMPLES: examples,
        p.TRAIN_LOSS: result.loss_mean,
        p.TRAIN_LOSS_FIRST: result.loss_first,
        p.TRAIN_SECONDS: result.seconds,
        **dp_metrics,
    }
    instruction = msg.content.config_records[p.CONFIG]
    # One flat vector; the names as the instruction's digest when they are the server's modules.
    arrays, layout = p.pack_factors(factors, modules_digest=instruction.get(p.MODULES_DIGEST))
    adapter: dict[str, Any] = {
        p.RANK: settings.lora_rank,
        p.ALPHA: settings.lora_alpha,
        p.NODE_NAME: settings.name,
        # which global adapter this reply was trained on
        p.GLOBAL_FINGERPRINT: str(instruction.get(p.GLOBAL_FINGERPRINT, "")),
        **layout,
        p.QUANTIZATION: settings.quantization,
    }
    return RecordDict(
        {
            p.ARRAYS: ArrayRecord(select(mode, p.ARRAYS, dict(arrays))),
            p.METRICS: MetricRecord(select(mode, p.METRICS, metrics)),
            p.ADAPTER: ConfigRecord(select(mode, p.ADAPTER, adapter)),
            p.PRIVACY: ConfigRecord(select(mode, p.PRIVACY, dp_config)),
        }
    )


def _public_a_seed(plan: PrivacyRound | None, config: TrainConfig, mode: NodeMode) -> int | None:
    """The seed of the public A (strategies/math/public_a.py) this round starts from: the strategy's
    `shared-a-seed` (ffa; continue mode's first round), else with dp-lora one that depends on the
    run seed and round only (A is published, the same at all nodes); else None (own seed)."""
    if mode.shared_a_seed is not None:
        return mode.shared_a_seed
    if plan is not None and plan.settings.mode == "dp-lora":
        return derive_seed(config.seed, config.server_round, "dp-lora-public-A")
    return None


def _personal_dir(context: Context, settings: NodeSettings) -> Path | None:
    """The node's state folder if it keeps a private LoRA (node config `personal`), else None."""
    if personal_mode(context.node_config) == "none":
        return None
    return node_state_dir(context.node_config, context.run_config, node_name=settings.name)


def _warm(job: _Job, context: Context) -> None:
    """A base model this message loaded gets ready for the node's train messages now, counted
    with its load (client/model/cache.py ``warm``); not for dp-sgd, whose LoRA is built fresh
    for opacus each round."""
    try:
        mode = node_privacy(context.node_config, context.run_config).mode
    except SettingsError:
        return  # the train message names the problem
    if mode != "dp-sgd":
        settings = job.settings
        base_cache.warm(job.model, rank=settings.lora_rank, alpha=settings.lora_alpha,
                        target_modules=settings.target_modules)  # fmt: skip


def run_evaluate(msg: Message, context: Context) -> RecordDict:
    """Score the global model (with the node's private LoRA, if it keeps one) on the node's
    held-out split; only the loss leaves the node."""
    job = _prepare(msg, context, arrays=_global_adapter(msg))
    _warm(job, context)
    _, eval_texts = load_node_texts(job.settings)
    rows = encode(eval_texts, job.tokenizer, max_length=job.config.max_length)
    model: torch.nn.Module = job.model
    state_dir = _personal_dir(context, job.settings)
    if state_dir is not None and has_personal(state_dir):  # the shared LoRA added is B = 0
        model = base_cache.attach_lora(job.model, rank=job.settings.lora_rank,
                                       alpha=job.settings.lora_alpha,
                                       target_modules=job.settings.target_modules,
                                       seed=0)  # fmt: skip
        attach_personal(model, state_dir, seed=0)
    loss, _ = evaluate_loss(model, rows, pad_id=job.tokenizer.pad_token_id)
    metrics = MetricRecord({p.EVAL_LOSS: loss, p.NUM_EXAMPLES: len(rows)})
    name = ConfigRecord({p.NODE_NAME: job.settings.name})
    return RecordDict({p.METRICS: metrics, p.ADAPTER: name})


app.train()(_reply_or_error(run_train))
app.evaluate()(_reply_or_error(run_evaluate))

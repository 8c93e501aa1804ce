"""The fedlora ClientApp: one institution's node.

Each message may run in a fresh process, so nothing is kept between rounds in module globals:
the node is stateless for FLoRA (the global adapter arrives with every message).
"""

from __future__ import annotations

import zlib
from collections.abc import Callable

import torch
from flwr.app import ConfigRecord, Context, Error, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from client.data import load_node_texts
from client.model import (
    attach_lora,
    load_base,
    lora_factors,
    merge_global_adapter,
    pick_device,
)
from client.settings import NodeSettings, SettingsError, TrainConfig, node_settings
from client.training import encode, evaluate_loss, train_local
from strategies import protocol as p

app = ClientApp()

ERROR_BAD_INPUT = 400


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
        return Message(content, reply_to=msg)

    wrapped.__name__ = handler.__name__
    return wrapped


def run_train(msg: Message, context: Context) -> RecordDict:
    """Merge the global adapter, train a fresh LoRA of the node's rank, return only its factors."""
    settings = _settings(context)
    config = TrainConfig.from_config(dict(msg.content.config_records[p.CONFIG]))
    global_arrays = p.from_record(msg.content.array_records[p.ARRAYS])
    model, tokenizer = load_base(settings.base_model, device=pick_device(settings.device))
    model = merge_global_adapter(model, global_arrays)
    seed = derive_seed(config.seed, config.server_round, settings.name)
    peft_model = attach_lora(
        model,
        rank=settings.lora_rank,
        alpha=settings.lora_alpha,
        target_modules=settings.target_modules,
        seed=seed,
    )
    train_texts, _ = load_node_texts(settings)
    rows = encode(train_texts, tokenizer, max_length=config.max_length)
    result = train_local(peft_model, rows, config, pad_id=tokenizer.pad_token_id, seed=seed)
    metrics = MetricRecord(
        {
            p.NUM_EXAMPLES: result.num_examples,
            p.TRAIN_LOSS: result.loss_mean,
            p.TRAIN_LOSS_FIRST: result.loss_first,
            p.TRAIN_SECONDS: result.seconds,
        }
    )
    adapter = ConfigRecord(
        {p.RANK: settings.lora_rank, p.ALPHA: settings.lora_alpha, p.NODE_NAME: settings.name}
    )
    arrays = p.to_record(lora_factors(peft_model))
    return RecordDict({p.ARRAYS: arrays, p.METRICS: metrics, p.ADAPTER: adapter})


def run_evaluate(msg: Message, context: Context) -> RecordDict:
    """Score the global model on the node's held-out split; only the loss leaves the node."""
    settings = _settings(context)
    config = TrainConfig.from_config(dict(msg.content.config_records[p.CONFIG]))
    global_arrays = p.from_record(msg.content.array_records[p.ARRAYS])
    model, tokenizer = load_base(settings.base_model, device=pick_device(settings.device))
    model = merge_global_adapter(model, global_arrays)
    _, eval_texts = load_node_texts(settings)
    rows = encode(eval_texts, tokenizer, max_length=config.max_length)
    loss, _ = evaluate_loss(model, rows, pad_id=tokenizer.pad_token_id)
    metrics = MetricRecord({p.EVAL_LOSS: loss, p.NUM_EXAMPLES: len(rows)})
    return RecordDict({p.METRICS: metrics, p.ADAPTER: ConfigRecord({p.NODE_NAME: settings.name})})


app.train()(_reply_or_error(run_train))
app.evaluate()(_reply_or_error(run_evaluate))

"""The node: training throughput against a plain torch + peft loop, and round overhead.

Throughput: fedlora's ``train_local`` and a plain loop (the same peft LoRA, the same batches
collated beforehand, ``model(..., labels=...).loss``, AdamW) on the same base model in one
process, alternating, median step time after the first step. Round overhead: one train and one
evaluate message through the ClientApp (``client.app``), their wall time minus the training and
scoring inside them, over the training time — with the base-model cache off (a fresh load and
merge per message, as before the cache) and on (warm), alternating.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.supercore.task_identity import TaskIdentity

import client.app as node_app
from bench.common import Figure
from client.data.synth import synth_partition
from client.model import cache as base_cache
from client.model.loading import attach_lora, load_base, lora_factors
from client.settings import TrainConfig
from client.training import collate, encode, sample_batches, train_local
from strategies import protocol as p

CPU = torch.device("cpu")


def _rows(model_dir: str, *, n: int, max_length: int) -> list[list[int]]:
    _, tokenizer = load_base(model_dir, device=CPU)
    train, _ = synth_partition(0, n_train=n, n_eval=1)
    return encode([r["text"] for r in train], tokenizer, max_length=max_length)


def _fedlora_steps(model_dir: str, rows: list[list[int]], config: TrainConfig) -> list[float]:
    model, tokenizer = load_base(model_dir, device=CPU)
    peft_model = attach_lora(model, rank=16, alpha=32, target_modules="all-linear", seed=0)
    times, last = [], time.perf_counter()

    def on_step(_: int) -> None:
        nonlocal last
        now = time.perf_counter()
        times.append(now - last)
        last = now

    train_local(peft_model, rows, config, pad_id=tokenizer.pad_token_id, seed=0, on_step=on_step)
    return times[1:]


def _plain_steps(model_dir: str, rows: list[list[int]], config: TrainConfig) -> list[float]:
    """The loop a peft tutorial writes: forward with labels, backward, AdamW."""
    model, tokenizer = load_base(model_dir, device=CPU)
    peft_model = attach_lora(model, rank=16, alpha=32, target_modules="all-linear", seed=0)
    batches = [
        collate(b, pad_id=tokenizer.pad_token_id, device=CPU)
        for b in sample_batches(rows, batch_size=config.batch_size, steps=config.local_steps,
                                seed=0)
    ]  # fmt: skip
    params = [q for q in peft_model.parameters() if q.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=0.0)
    peft_model.train()
    times = []
    for batch in batches:
        start = time.perf_counter()
        out = peft_model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                         labels=batch.labels)  # fmt: skip
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        optimizer.step()
        times.append(time.perf_counter() - start)
    return times[1:]


def throughput(label: str, model_dir: str, *, steps: int, repeats: int) -> list[Figure]:
    """fedlora's tokens/s over the plain loop's (same model, batch 8 of ≤ 128 tokens, steps)."""
    rows = _rows(model_dir, n=64, max_length=128)
    config = TrainConfig(local_steps=steps, batch_size=8, max_length=128)
    tokens = statistics.mean(
        sum(len(r) for r in b) for b in sample_batches(rows, batch_size=8, steps=steps, seed=0)
    )
    found: dict[str, list[float]] = {"fedlora": [], "plain": []}
    for _ in range(repeats):
        found["fedlora"] += _fedlora_steps(model_dir, rows, config)
        found["plain"] += _plain_steps(model_dir, rows, config)
    ours, plain = (statistics.median(found[k]) for k in ("fedlora", "plain"))
    detail = (f"{tokens / ours:.0f} vs {tokens / plain:.0f} tokens/s "
              f"({ours * 1e3:.0f} vs {plain * 1e3:.0f} ms/step, rank 16)")  # fmt: skip
    return [Figure("node", f"{label}: throughput / plain torch+peft loop", plain / ours, "×",
                   ">= 0.95", detail)]  # fmt: skip


def _global_adapter(model_dir: str, rank: int) -> dict[str, np.ndarray]:
    """A rank-``rank`` global adapter on every linear module, as the server sends after a few
    rounds (random factors of a typical size)."""
    model, _ = load_base(model_dir, device=CPU)
    shapes = lora_factors(attach_lora(model, rank=rank, alpha=rank, target_modules="all-linear",
                                      seed=0))  # fmt: skip
    rng = np.random.default_rng(0)
    return {k: (0.01 * rng.standard_normal(v.shape)).astype(np.float32) for k, v in shapes.items()}


def _message(kind: str, arrays: dict[str, np.ndarray], config: TrainConfig) -> Message:
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 1
    content = RecordDict({p.ARRAYS: p.to_record(arrays),
                          p.CONFIG: ConfigRecord(config.to_config())})  # fmt: skip
    msg = Message(content, dst_node_id=7, message_type=kind, group_id="1")
    msg.metadata.__dict__["_message_id"] = "m1"
    return msg


@contextmanager
def _timed_scoring(sink: list[float]) -> Iterator[None]:
    """Record how long ``evaluate_loss`` takes inside the evaluate message."""
    original: Callable[..., Any] = node_app.evaluate_loss

    def timed(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            sink.append(time.perf_counter() - start)

    node_app.evaluate_loss = timed  # type: ignore[assignment]
    try:
        yield
    finally:
        node_app.evaluate_loss = original  # type: ignore[assignment]


def _round(
    model_dir: str, arrays: dict[str, np.ndarray], config: TrainConfig
) -> tuple[float, float]:
    """(overhead seconds, training seconds) of one train + one evaluate message."""
    run = {"base-model": model_dir, "synth-train-examples": 64, "synth-eval-examples": 16,
           "max-length": config.max_length}  # fmt: skip
    node = {"partition-id": 0, "lora-rank": 16}
    context = Context(run_id=1, node_id=7, node_config=node, state=RecordDict(), run_config=run)
    start = time.perf_counter()
    reply = node_app.app(_message("train", arrays, config), context)
    train_wall = time.perf_counter() - start
    if reply.has_error():
        raise RuntimeError(reply.error.reason)
    trained = float(reply.content.metric_records[p.METRICS][p.TRAIN_SECONDS])
    scoring: list[float] = []
    with _timed_scoring(scoring):
        start = time.perf_counter()
        node_app.app(_message("evaluate", arrays, config), context)
        eval_wall = time.perf_counter() - start
    return (train_wall - trained) + (eval_wall - sum(scoring)), trained


def round_overhead(label: str, model_dir: str, *, steps: int, repeats: int) -> list[Figure]:
    """Node overhead per round over training time, cache off (before) and on (after)."""
    arrays = _global_adapter(model_dir, rank=64)
    config = TrainConfig(local_steps=steps, batch_size=8, max_length=128, server_round=2)
    found: dict[str, list[tuple[float, float]]] = {"0": [], "1": []}
    previous = os.environ.get(base_cache.ENV_SWITCH)
    try:
        _round(model_dir, arrays, config)  # warm the cache and the allocator
        for _ in range(repeats):
            for switch, sink in found.items():
                os.environ[base_cache.ENV_SWITCH] = switch
                sink.append(_round(model_dir, arrays, config))
    finally:
        os.environ.pop(base_cache.ENV_SWITCH, None)
        if previous is not None:
            os.environ[base_cache.ENV_SWITCH] = previous
    figures = []
    for switch, name, goal in (("0", "cache off (load + merge per message)", ""),
                               ("1", "cache on", "<= 0.05")):  # fmt: skip
        over = statistics.median(o for o, _ in found[switch])
        train = statistics.median(t for _, t in found[switch])
        figures.append(Figure("node", f"{label}: round overhead / training time, {name}",
                              over / train, "×", goal,
                              f"{over:.2f} s per train + evaluate vs {train:.2f} s training "
                              f"({steps} steps)"))  # fmt: skip
    return figures


def run(*, smollm_dir: Path) -> list[Figure]:
    """On 2 CPU cores a 135M-shape step (batch 8 × ≤ 128 tokens) takes seconds: few of them."""
    return (
        throughput("embedded", "", steps=12, repeats=2)
        + throughput("135M-shape", str(smollm_dir), steps=3, repeats=1)
        + round_overhead("135M-shape", str(smollm_dir), steps=4, repeats=1)
    )

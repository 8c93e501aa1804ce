"""Local training and evaluation of a causal LM on a node's texts."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
from transformers import PreTrainedTokenizerBase

from client.settings import TrainConfig

IGNORE = -100


@dataclass(frozen=True)
class Batch:
    input_ids: torch.Tensor  # (b, t)
    attention_mask: torch.Tensor  # (b, t)
    labels: torch.Tensor  # (b, t), IGNORE at padding


@dataclass(frozen=True)
class TrainResult:
    num_examples: int
    steps: int
    loss_first: float
    loss_mean: float
    seconds: float


def encode(
    texts: Sequence[str], tokenizer: PreTrainedTokenizerBase, *, max_length: int
) -> list[list[int]]:
    """Token ids per text: ``<bos> text <eos>``, truncated to ``max_length``."""
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    encoded = []
    for text in texts:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        encoded.append((bos + list(ids) + eos)[:max_length])
    return encoded


def collate(rows: Sequence[list[int]], *, pad_id: int, device: torch.device) -> Batch:
    """Right-pad to the longest row; padding is masked out of attention and loss."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        mask[i, : len(row)] = 1
    labels = ids.masked_fill(mask == 0, IGNORE)
    return Batch(ids.to(device), mask.to(device), labels.to(device))


def sample_batches(
    rows: Sequence[list[int]], *, batch_size: int, steps: int, seed: int
) -> Iterator[list[list[int]]]:
    """``steps`` batches drawn by seeded shuffled passes over the rows (epochs wrap around)."""
    generator = torch.Generator().manual_seed(seed)
    order: list[int] = []
    for _ in range(steps):
        while len(order) < batch_size:
            order.extend(torch.randperm(len(rows), generator=generator).tolist())
        picked, order = order[:batch_size], order[batch_size:]
        yield [rows[i] for i in picked]


def token_loss_sum(model: torch.nn.Module, batch: Batch) -> tuple[torch.Tensor, int]:
    """Summed next-token cross-entropy over non-padding targets, and their count."""
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    shift_logits = logits[:, :-1].float()  # (b, t-1, vocab)
    shift_labels = batch.labels[:, 1:]  # (b, t-1)
    loss = torch.nn.functional.cross_entropy(
        shift_logits.reshape(-1, shift_logits.shape[-1]),
        shift_labels.reshape(-1),
        ignore_index=IGNORE,
        reduction="sum",
    )
    return loss, int((shift_labels != IGNORE).sum())


def train_local(
    model: torch.nn.Module,
    rows: Sequence[list[int]],
    config: TrainConfig,
    *,
    pad_id: int,
    seed: int,
    on_step: Callable[[int], None] | None = None,
) -> TrainResult:
    """Train the model's trainable (LoRA) parameters with AdamW for ``config.local_steps``."""
    if not rows:
        raise ValueError("the node has no training examples: add records to train.jsonl")
    device = next(model.parameters()).device
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=0.0)
    model.train()
    start = time.perf_counter()
    losses = []
    batches = sample_batches(
        rows, batch_size=config.batch_size, steps=config.local_steps, seed=seed
    )
    for picked in batches:
        batch = collate(picked, pad_id=pad_id, device=device)
        loss_sum, count = token_loss_sum(model, batch)
        loss = loss_sum / max(count, 1)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        optimizer.step()
        losses.append(float(loss.detach()))
        if on_step is not None:
            on_step(len(losses) - 1)
    return TrainResult(
        num_examples=len(rows),
        steps=len(losses),
        loss_first=losses[0],
        loss_mean=sum(losses) / len(losses),
        seconds=time.perf_counter() - start,
    )


@torch.no_grad()
def evaluate_loss(
    model: torch.nn.Module, rows: Sequence[list[int]], *, pad_id: int, batch_size: int = 32
) -> tuple[float, int]:
    """Mean next-token loss (nats/token) over all rows, and the number of scored tokens."""
    if not rows:
        raise ValueError("the node has no evaluation examples: add records to eval.jsonl")
    device = next(model.parameters()).device
    model.eval()
    total, count = 0.0, 0
    for i in range(0, len(rows), batch_size):
        batch = collate(rows[i : i + batch_size], pad_id=pad_id, device=device)
        loss_sum, n = token_loss_sum(model, batch)
        total += float(loss_sum)
        count += n
    return (total / count if count else math.nan), count

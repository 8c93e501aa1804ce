"""Local training with differential privacy: DP-SGD (opacus) and DP-LoRA's B-only training.

DP-SGD (Abadi et al., CCS 2016), per training record: each step draws a Poisson batch (each row
independently with probability q), computes per-sequence gradients of the LoRA parameters
(opacus ``GradSampleModule`` hooks on peft's ``lora_A``/``lora_B`` ``nn.Linear`` layers),
clips each sequence's gradient jointly to C, sums, adds N(0, σ²C²) and divides by the expected
batch size q·n (opacus ``DPOptimizer``), then takes an AdamW step.

We assemble opacus's parts ourselves instead of calling ``PrivacyEngine.make_private``: its
data loader pads empty Poisson batches from fixed per-sample shapes (our rows are token lists of
varying length) and runs 1/q steps per epoch (we need exactly ``local-steps``); and its
accountant lives in one Python object, while ours is the node's ledger, restored every round
(client/privacy/ledger.py). The mechanism and the accounting are opacus's own.

Noise and sampling come from a ChaCha20 stream keyed with 256 fresh bits per release
(client/privacy/noise.py), never from run-config seeds: the server knows those and could subtract
the noise. Activation checkpointing works: opacus's forward hooks would count the recomputation
in the backward pass as a second forward and never finish the per-sample gradients, so
:class:`CheckpointSafeGradSampleModule` keeps the first forward's inputs and skips the
recomputation's.
"""

from __future__ import annotations

import hashlib
import time
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch
from opacus import GradSampleModule
from opacus.optimizers import DPOptimizer
from opacus.optimizers.optimizer import _check_processed_flag, _mark_as_processed

from client.privacy.noise import SecureRandom
from client.settings import TrainConfig
from client.training import IGNORE, Batch, TrainResult, collate


class CheckpointSafeGradSampleModule(GradSampleModule):  # type: ignore[misc]
    """opacus's ``GradSampleModule`` that ignores forwards run inside the backward pass.

    Non-reentrant activation checkpointing (``use_reentrant=False``) recomputes each block's
    forward during backward; opacus's hook would store the inputs a second time and count a
    second forward, so the per-sample gradient of every LoRA layer stays unfinished ("Per sample
    gradient is not initialized"). The recomputed inputs equal the first forward's, which the
    hook already kept, so skipping them changes no value.
    """

    def capture_activations_hook(
        self, module: torch.nn.Module, forward_input: Any, forward_output: Any
    ) -> None:
        if torch._C._current_graph_task_id() != -1:  # inside backward: a recomputation
            return
        super().capture_activations_hook(module, forward_input, forward_output)


class SecureNoiseDPOptimizer(DPOptimizer):  # type: ignore[misc]
    """opacus's ``DPOptimizer`` whose Gaussian noise comes from :class:`SecureRandom`."""

    def __init__(self, *args: Any, source: SecureRandom, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.source = source

    def add_noise(self) -> None:
        std = self.noise_multiplier * self.max_grad_norm
        for p in self.params:
            summed = p.summed_grad
            _check_processed_flag(summed)
            noise = self.source.normal(0.0, std, size=tuple(summed.shape))
            p.grad = (summed + torch.from_numpy(noise).to(summed)).view_as(p)
            _mark_as_processed(summed)


def _source(seed: int | None) -> SecureRandom:
    if seed is None:
        return SecureRandom()
    return SecureRandom(hashlib.sha256(f"fedlora-test-seed:{seed}".encode()).digest())


def sequence_losses(model: torch.nn.Module, batch: Batch) -> torch.Tensor:
    """Mean next-token loss of each sequence, shape (b,): one record's loss depends on it alone."""
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    shift_logits = logits[:, :-1].float()  # (b, t-1, vocab)
    labels = batch.labels[:, 1:]  # (b, t-1)
    per_token = torch.nn.functional.cross_entropy(
        shift_logits.transpose(1, 2), labels, ignore_index=IGNORE, reduction="none"
    )  # (b, t-1), 0 at ignored positions
    counts = (labels != IGNORE).sum(dim=1).clamp(min=1)  # (b,)
    return per_token.sum(dim=1) / counts


def poisson_indices(n: int, sample_rate: float, source: SecureRandom) -> list[int]:
    """Each of ``n`` rows independently with probability ``sample_rate`` (may be empty)."""
    return [int(i) for i in source.bernoulli(n, sample_rate).nonzero()[0]]


def train_dp_sgd(
    model: torch.nn.Module,
    rows: Sequence[list[int]],
    config: TrainConfig,
    *,
    noise_multiplier: float,
    clip_norm: float,
    sample_rate: float,
    pad_id: int,
    expected_batch_size: float | None = None,
    seed: int | None = None,
    on_step: Callable[[int], None] | None = None,
) -> TrainResult:
    """``config.local_steps`` DP-SGD steps on the model's trainable (LoRA) parameters.

    An empty Poisson batch still takes a step (zero gradient plus noise), as the accountant
    assumes. The noised sum is divided by ``expected_batch_size`` (default q·n; a node passes
    q·ñ with ñ its noised, accounted record count, so the divisor reveals nothing more).
    ``seed`` fixes noise and sampling for tests; leave it None on a real node.
    """
    if not rows:
        raise ValueError("the node has no training examples: add records to train.jsonl")
    device = next(model.parameters()).device
    source = _source(seed)
    gsm = CheckpointSafeGradSampleModule(
        model, batch_first=True, loss_reduction="mean", strict=True
    )
    params = [p for p in gsm.parameters() if p.requires_grad]
    divisor = sample_rate * len(rows) if expected_batch_size is None else expected_batch_size
    optimizer = SecureNoiseDPOptimizer(
        torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=0.0),
        noise_multiplier=noise_multiplier,
        max_grad_norm=clip_norm,
        expected_batch_size=max(divisor, 1e-12),
        loss_reduction="mean",
        source=source,
    )
    gsm.train()
    start, losses = time.perf_counter(), []
    for step in range(config.local_steps):
        picked = poisson_indices(len(rows), sample_rate, source)
        optimizer.zero_grad(set_to_none=True)
        if picked:
            batch = collate([rows[i] for i in picked], pad_id=pad_id, device=device)
            loss = sequence_losses(gsm, batch).mean()
            with warnings.catch_warnings():  # opacus hooks frozen-input layers: expected
                warnings.filterwarnings("ignore", message="Full backward hook is firing")
                loss.backward()  # type: ignore[no-untyped-call]
            losses.append(float(loss.detach()))
        else:
            for p in params:  # opacus treats a zero-length grad_sample as an empty batch
                p.grad_sample = torch.zeros((0, *p.shape), device=p.device, dtype=p.dtype)
        optimizer.step()
        if on_step is not None:
            on_step(step)
    gsm.cleanup()  # remove opacus's hooks and attributes: the peft model is used as before
    losses = losses or [float("nan")]
    return TrainResult(
        num_examples=len(rows),
        steps=config.local_steps,
        loss_first=losses[0],
        loss_mean=sum(losses) / len(losses),
        seconds=time.perf_counter() - start,
    )


def freeze_lora_a(model: torch.nn.Module) -> int:
    """DP-LoRA: keep every ``lora_A`` at its seeded init (public); returns how many were frozen."""
    frozen = 0
    for name, param in model.named_parameters():
        if ".lora_A." in name:
            param.requires_grad_(False)
            frozen += 1
    if frozen == 0:
        raise ValueError("no `lora_A` parameters found: attach a peft LoRA before DP-LoRA")
    return frozen

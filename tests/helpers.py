"""Helpers shared by test modules (no Flower imports: GPU hosts may lack it)."""

from __future__ import annotations

from pathlib import Path

import torch

from client.model.loading import attach_lora, load_base, lora_factors


def lora_factor_shapes(model_dir: Path, rank: int) -> dict[str, tuple[int, ...]]:
    """peft key name -> shape of every LoRA factor a node of ``rank`` trains on this model."""
    model, _ = load_base(str(model_dir), device=torch.device("cpu"))
    peft_model = attach_lora(model, rank=rank, alpha=rank, target_modules="all-linear", seed=0)
    return {key: value.shape for key, value in lora_factors(peft_model).items()}

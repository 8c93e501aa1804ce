"""Quantized base models (QLoRA) through bitsandbytes.

Node setting ``quantization``: ``none`` (the default), ``nf4`` (4-bit NormalFloat with double
quantization and bf16 compute, as QLoRA does) or ``int8`` (LLM.int8). transformers' loader
quantizes the linear layers while it reads the weights (``BitsAndBytesConfig``); peft's
``prepare_model_for_kbit_training`` then freezes them and keeps the rest in fp32. The node's LoRA
and the factors it sends stay fp32; the global adapter is never merged into quantized weights
but kept beside them as a frozen fp32 adapter (client/model/cache.py).

bitsandbytes quantizes on CUDA only, and it is an optional extra (``pip install 'fedlora[gpu]'``):
without CUDA or without the package the setting is refused before the model is read, in one line
naming the value and the fix.
"""

from __future__ import annotations

from typing import TypeVar

import torch
from peft import prepare_model_for_kbit_training
from transformers import BitsAndBytesConfig

from client.settings import bitsandbytes_installed, quantization_problem
from common.config import SettingsError

M = TypeVar("M", bound=torch.nn.Module)


def check_runtime(quantization: str, device: torch.device) -> None:
    """Raise `SettingsError` (one problem) when ``quantization`` cannot run on this node."""
    problem = quantization_problem(
        quantization,
        device=str(device),
        cuda_available=torch.cuda.is_available(),
        installed=bitsandbytes_installed(),
    )
    if problem:
        raise SettingsError([problem])


def bnb_config(quantization: str, *, compute_dtype: torch.dtype) -> BitsAndBytesConfig | None:
    """transformers' ``BitsAndBytesConfig`` for the setting; None for ``none``."""
    if quantization == "none":
        return None
    if quantization == "nf4":
        return BitsAndBytesConfig(  # type: ignore[no-untyped-call]
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=compute_dtype,
        )
    if quantization == "int8":
        return BitsAndBytesConfig(load_in_8bit=True)  # type: ignore[no-untyped-call]
    raise SettingsError([f"`quantization` is {quantization!r}: use none, nf4 or int8"])


def compute_dtype(quantization: str, dtype: torch.dtype) -> torch.dtype:
    """A quantized model computes in bf16 (QLoRA) unless the node asked for fp16."""
    if quantization != "none" and dtype == torch.float32:
        return torch.bfloat16
    return dtype


def is_quantized(model: torch.nn.Module) -> bool:
    """Loaded through bitsandbytes (4- or 8-bit)."""
    return bool(getattr(model, "is_loaded_in_4bit", False) or
                getattr(model, "is_loaded_in_8bit", False))  # fmt: skip


def prepare(model: M) -> M:
    """peft's QLoRA preparation: base weights frozen, non-quantized ones in fp32. Activation
    checkpointing stays the node's own setting (``gradient-checkpointing``)."""
    prepared: M = prepare_model_for_kbit_training(  # type: ignore[no-untyped-call]
        model, use_gradient_checkpointing=False
    )
    return prepared

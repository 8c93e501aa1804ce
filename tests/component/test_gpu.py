"""One client step on CUDA (skipped without it). Imports no Flower, so it runs on bare GPU hosts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from client.data.synth import synth_partition
from client.model.loading import (
    attach_lora,
    load_base,
    lora_factors,
    merge_global_adapter,
    pick_device,
)
from client.settings import TrainConfig
from client.training import encode, evaluate_loss, train_local
from strategies.math.factors import A_SUFFIX, B_SUFFIX
from tests.helpers import lora_factor_shapes

pytestmark = pytest.mark.gpu


def _global_adapter(model_dir: Path, rank: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        key: rng.normal(scale=0.05, size=shape).astype(np.float32)
        for key, shape in lora_factor_shapes(model_dir, rank).items()
    }


def test_client_step_on_cuda_matches_cpu_and_returns_cpu_fp32_factors(embedded_dir: Path) -> None:
    device = pick_device("auto")
    assert device.type == "cuda"
    arrays = _global_adapter(embedded_dir, rank=6)
    train, evaluation = synth_partition(2, n_train=32, n_eval=16)
    losses = {}
    for dev in (torch.device("cpu"), device):
        model, tokenizer = load_base(str(embedded_dir), device=dev)
        model = merge_global_adapter(model, arrays)
        rows = encode([r["text"] for r in evaluation], tokenizer, max_length=64)
        losses[dev.type], _ = evaluate_loss(model, rows, pad_id=tokenizer.pad_token_id)
    assert losses["cuda"] == pytest.approx(losses["cpu"], abs=1e-3)

    model, tokenizer = load_base(str(embedded_dir), device=device)
    model = merge_global_adapter(model, arrays)
    peft_model = attach_lora(model, rank=4, alpha=8, target_modules="all-linear", seed=1)
    assert all(p.device.type == "cuda" for p in peft_model.parameters())
    rows = encode([r["text"] for r in train], tokenizer, max_length=64)
    result = train_local(
        peft_model,
        rows,
        TrainConfig(local_steps=5, batch_size=8),
        pad_id=tokenizer.pad_token_id,
        seed=0,
    )
    factors = lora_factors(peft_model)
    assert result.steps == 5 and np.isfinite(result.loss_mean)
    assert all(v.dtype == np.float32 and isinstance(v, np.ndarray) for v in factors.values())
    b_moved = sum(float(np.abs(v).sum()) for k, v in factors.items() if k.endswith(B_SUFFIX))
    assert b_moved > 0
    assert all(factors[k].shape[0] == 4 for k in factors if k.endswith(A_SUFFIX))


def test_qlora_round_nf4_on_a_tiny_llama(embedded_dir: Path) -> None:
    """A node round with `quantization = nf4`: the linear layers are bitsandbytes 4-bit, the global
    adapter acts beside them (never merged), the node's LoRA and its factors are fp32, the loss
    is near the bf16 model's, and the cached model comes back for the next message."""
    bnb = pytest.importorskip("bitsandbytes")
    from client.model import cache as base_cache
    from client.model.quantization import is_quantized

    device = pick_device("auto")
    arrays = _global_adapter(embedded_dir, rank=6)
    train, evaluation = synth_partition(2, n_train=32, n_eval=16)
    losses = {}
    for quantization in ("none", "nf4"):
        model, tokenizer = base_cache.checkout(
            str(embedded_dir), device=device, dtype=torch.bfloat16, gradient_checkpointing=True,
            quantization=quantization,
        )  # fmt: skip
        try:
            assert is_quantized(model) == (quantization == "nf4")
            layer = model.get_submodule("model.layers.0.self_attn.q_proj")
            if quantization == "nf4":
                assert isinstance(layer, bnb.nn.Linear4bit)
                before = layer.weight.detach().clone()
            base_cache.apply_global(model, arrays)
            rows = encode([r["text"] for r in evaluation], tokenizer, max_length=64)
            losses[quantization], _ = evaluate_loss(model, rows, pad_id=tokenizer.pad_token_id)
            peft_model = attach_lora(model, rank=4, alpha=8, target_modules="all-linear", seed=1)
            assert {q.dtype for q in peft_model.parameters() if q.requires_grad} == {torch.float32}
            rows = encode([r["text"] for r in train], tokenizer, max_length=64)
            result = train_local(peft_model, rows, TrainConfig(local_steps=5, batch_size=8),
                                 pad_id=tokenizer.pad_token_id, seed=0)  # fmt: skip
            factors = lora_factors(peft_model)
            assert result.steps == 5 and np.isfinite(result.loss_mean)
            assert all(v.dtype == np.float32 for v in factors.values())
            assert sum(float(np.abs(v).sum()) for k, v in factors.items() if k.endswith(B_SUFFIX))
            if quantization == "nf4":
                assert torch.equal(layer.weight.detach(), before)  # nothing merged into 4-bit
        finally:
            base_cache.release()
    assert losses["nf4"] == pytest.approx(losses["none"], rel=0.1)
    again, _ = base_cache.checkout(str(embedded_dir), device=device, dtype=torch.bfloat16,
                                   gradient_checkpointing=False, quantization="nf4")  # fmt: skip
    base_cache.release()
    assert again is model  # the 4-bit model was restored and kept in the cache

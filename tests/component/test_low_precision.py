"""A bf16 node: its loss matches the fp32 node's within bf16 tolerance, its trainable LoRA and the
global adapter stay fp32, and the global update survives (it would not, merged into bf16)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from client.model import cache as base_cache
from client.model.loading import attach_lora, load_base, merge_global_adapter
from client.settings import TrainConfig
from client.training import encode, train_local
from tests.component.test_base_cache import global_adapter

CPU = torch.device("cpu")
TEXTS = ["Patient reports mild headache; advised rest.", "Wire transfer memo: invoice 1043."] * 4


pytestmark = pytest.mark.usefixtures("empty_base_cache")


def _train(model_dir: str, dtype: torch.dtype) -> tuple[float, float, set[torch.dtype]]:
    arrays = global_adapter(model_dir, rank=8, scale=0.02, seed=3)
    model, tokenizer = base_cache.checkout(model_dir, device=CPU, dtype=dtype,
                                           gradient_checkpointing=True)  # fmt: skip
    try:
        base_cache.apply_global(model, arrays)
        peft_model = attach_lora(model, rank=8, alpha=16, target_modules="all-linear", seed=1)
        lora_dtypes = {p.dtype for p in peft_model.parameters() if p.requires_grad}
        rows = encode(TEXTS, tokenizer, max_length=64)
        config = TrainConfig(local_steps=4, batch_size=4, learning_rate=0.003)
        result = train_local(peft_model, rows, config, pad_id=tokenizer.pad_token_id, seed=0)
        return result.loss_first, result.loss_mean, lora_dtypes
    finally:
        base_cache.release()


def test_bf16_node_loss_matches_fp32(embedded_dir: Path) -> None:
    first32, mean32, dtypes32 = _train(str(embedded_dir), torch.float32)
    first16, mean16, dtypes16 = _train(str(embedded_dir), torch.bfloat16)
    assert dtypes32 == dtypes16 == {torch.float32}  # the factors that leave the node are fp32
    assert first16 == pytest.approx(first32, rel=2e-2)
    assert mean16 == pytest.approx(mean32, rel=2e-2)


def _logits(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids).logits.float()


def test_bf16_node_keeps_the_global_update(embedded_dir: Path) -> None:
    """The adapted-vs-base logit difference of a bf16 node carries the fp32 node's (projected
    onto it over 1024 tokens), and the bf16 weights themselves stay untouched."""
    model_dir = str(embedded_dir)
    arrays = global_adapter(model_dir, rank=8, scale=0.02, seed=5)
    ids = torch.randint(3, 250, (8, 128), generator=torch.Generator().manual_seed(0))
    base32, _ = load_base(model_dir, device=CPU)
    reference = _logits(base32, ids)
    delta32 = _logits(merge_global_adapter(base32, arrays), ids) - reference
    base16, _ = load_base(model_dir, device=CPU, dtype=torch.bfloat16)
    plain16 = _logits(base16, ids)
    model, _ = base_cache.checkout(model_dir, device=CPU, dtype=torch.bfloat16,
                                   gradient_checkpointing=False)  # fmt: skip
    base_cache.apply_global(model, arrays)
    delta16 = _logits(model, ids) - plain16
    for key, value in base16.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key  # nothing merged into bf16
    base_cache.release()
    retained = float((delta16 * delta32).sum() / (delta32 * delta32).sum())
    assert retained == pytest.approx(1.0, abs=0.05)


@pytest.mark.gpu
def test_auto_dtype_is_bf16_on_cuda_and_the_node_trains(embedded_dir: Path) -> None:
    from client.model.loading import pick_dtype

    cuda = torch.device("cuda")
    assert pick_dtype("auto", cuda) == torch.bfloat16
    model, tokenizer = base_cache.checkout(str(embedded_dir), device=cuda, dtype=torch.bfloat16,
                                           gradient_checkpointing=True)  # fmt: skip
    try:
        base_cache.apply_global(model, global_adapter(str(embedded_dir), rank=8, scale=0.02,
                                                      seed=3))  # fmt: skip
        peft_model = attach_lora(model, rank=8, alpha=16, target_modules="all-linear", seed=1)
        rows = encode(TEXTS, tokenizer, max_length=64)
        result = train_local(peft_model, rows, TrainConfig(local_steps=3, batch_size=4),
                             pad_id=tokenizer.pad_token_id, seed=0)  # fmt: skip
        assert result.loss_mean == result.loss_mean  # finite, not NaN
    finally:
        base_cache.release()

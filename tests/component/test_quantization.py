"""QLoRA plumbing on CPU: the bitsandbytes configuration, the refusal before any weight is read,
the global adapter kept beside quantized weights, the reply's `quantization`; and the sizes the
multi-GPU placement and the memory table rest on, against real models."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from client.model import cache as base_cache
from client.model import loading, placement
from client.model.loading import attach_lora, load_base
from client.model.memory import ModelShape, linear_params, lora_params, other_params
from client.model.quantization import bnb_config, compute_dtype
from common.config import SettingsError
from strategies import protocol as p
from tests.component.test_base_cache import IDS, fresh_logits, global_adapter
from tests.component.test_client_round import _train_reply

CPU = torch.device("cpu")


pytestmark = pytest.mark.usefixtures("empty_base_cache")


def test_nf4_is_qlora_s_configuration_and_int8_is_llm_int8() -> None:
    nf4 = bnb_config("nf4", compute_dtype=torch.bfloat16)
    assert nf4 is not None and nf4.load_in_4bit and not nf4.load_in_8bit
    assert nf4.bnb_4bit_quant_type == "nf4" and nf4.bnb_4bit_use_double_quant
    assert nf4.bnb_4bit_compute_dtype == torch.bfloat16
    int8 = bnb_config("int8", compute_dtype=torch.bfloat16)
    assert int8 is not None and int8.load_in_8bit and not int8.load_in_4bit
    assert bnb_config("none", compute_dtype=torch.float32) is None
    assert compute_dtype("nf4", torch.float32) == torch.bfloat16  # QLoRA computes in bf16
    assert compute_dtype("nf4", torch.float16) == torch.float16
    assert compute_dtype("none", torch.float32) == torch.float32


def test_without_cuda_nf4_is_refused_before_any_weight_is_read(
    embedded_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)

    def never(*args: object, **kwargs: object) -> None:
        raise AssertionError("the base model was read")

    monkeypatch.setattr(loading.AutoModelForCausalLM, "from_pretrained", never)
    with pytest.raises(SettingsError) as err:
        load_base(str(embedded_dir), device=CPU, quantization="nf4")
    (line,) = err.value.problems
    assert line.startswith("`quantization` is 'nf4' but CUDA is not available")
    assert "set quantization=none" in line
    reply = _train_reply(embedded_dir, quantization="int8")  # through the ClientApp
    assert reply.has_error() and reply.error.code == 400
    assert "`quantization` is 'int8' but CUDA is not available" in reply.error.reason


def test_a_train_reply_says_how_the_node_held_its_model(embedded_dir: Path) -> None:
    reply = _train_reply(embedded_dir)
    assert not reply.has_error(), reply.error.reason if reply.has_error() else ""
    assert reply.content.config_records[p.ADAPTER][p.QUANTIZATION] == "none"


def test_a_quantized_model_keeps_the_global_adapter_beside_its_weights(
    embedded_dir: Path,
) -> None:
    """Stand-in: the fp32 embedded model flagged as 4-bit. Merging would write into its weights;
    the adapter must instead act beside them (same logits as peft's merge), and the model must
    go back to the cache as prepared (frozen)."""
    model_dir = str(embedded_dir)
    arrays = global_adapter(model_dir, rank=4, scale=0.05, seed=2)
    model, _ = base_cache.checkout(model_dir, device=CPU, dtype=torch.float32,
                                   gradient_checkpointing=False)  # fmt: skip
    model.is_loaded_in_4bit = True
    model.requires_grad_(False)  # as peft's prepare_model_for_kbit_training leaves it
    before = {k: v.clone() for k, v in model.state_dict().items()}
    base_cache.apply_global(model, arrays)
    after = model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in before.items())  # nothing merged
    with torch.no_grad():
        logits = model(input_ids=IDS).logits
    torch.testing.assert_close(logits, fresh_logits(model_dir, arrays), rtol=1e-4, atol=1e-4)
    peft_model = attach_lora(model, rank=4, alpha=8, target_modules="all-linear", seed=1)
    assert {q.dtype for q in peft_model.parameters() if q.requires_grad} == {torch.float32}
    base_cache.release()
    again, _ = base_cache.checkout(model_dir, device=CPU, dtype=torch.float32,
                                   gradient_checkpointing=False)  # fmt: skip
    assert again is model  # restored and kept, not dropped
    assert not any(q.requires_grad for q in again.parameters())
    with torch.no_grad():
        plain = again(input_ids=IDS).logits
    assert not torch.allclose(plain, logits)  # the global adapter's hooks are gone


def _tiny_llama() -> LlamaForCausalLM:
    config = LlamaConfig(vocab_size=50, hidden_size=32, intermediate_size=48,
                         num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
                         tie_word_embeddings=False)  # fmt: skip
    return LlamaForCausalLM(config)


def test_memory_counts_match_real_models(embedded_dir: Path) -> None:
    model = _tiny_llama()
    shape = ModelShape.from_config(model.config.to_dict())
    assert linear_params(shape) + other_params(shape) == sum(q.numel() for q in model.parameters())
    peft_model = attach_lora(model, rank=3, alpha=6, target_modules="all-linear", seed=0)
    trainable = sum(q.numel() for q in peft_model.parameters() if q.requires_grad)
    assert lora_params(shape, rank=3) == trainable
    embedded, _ = load_base(str(embedded_dir), device=CPU)
    tied = ModelShape.from_config(embedded.config.to_dict())
    total = sum(q.numel() for q in embedded.parameters())  # tied: the head is the embedding
    assert linear_params(tied) + other_params(tied) == total
    size = placement.model_bytes(str(embedded_dir), dtype=torch.float32, quantization="none",
                                 offline=True)  # fmt: skip
    assert size == 4 * total
    assert placement.model_bytes(str(embedded_dir), dtype=torch.bfloat16, quantization="none",
                                 offline=True) == 2 * total  # fmt: skip


def test_two_small_gpus_get_a_device_map_and_the_node_log_says_so(
    embedded_dir: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    size = placement.model_bytes(str(embedded_dir), dtype=torch.float32, quantization="none",
                                 offline=True)  # fmt: skip
    reserve = 2 * 1024**3
    free = {0: reserve + size // 2 + 1024, 1: reserve + size // 2 + 1024}
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda i: (free[i], 80 * 1024**3))
    with caplog.at_level(logging.INFO, logger="flwr"):
        where = placement.plan(str(embedded_dir), dtype=torch.float32, quantization="none",
                               offline=True)  # fmt: skip
    assert where.max_memory == {0: size // 2 + 1024, 1: size // 2 + 1024}
    assert "does not fit on one GPU: spread over GPUs 0, 1" in caplog.text
    free[0] = reserve + 2 * size
    assert placement.plan(str(embedded_dir), dtype=torch.float32, quantization="none",
                          offline=True).max_memory is None  # fmt: skip

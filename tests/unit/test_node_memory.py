"""The node's memory arithmetic (client/model/memory.py) and where `device = auto` puts a model
on a made-up inventory of GPUs."""

from __future__ import annotations

from pathlib import Path

import pytest

from client.model.memory import (
    GIB,
    LLAMA_7B,
    LLAMA_70B,
    ModelShape,
    activation_bytes,
    held_bytes,
    linear_params,
    lora_params,
    other_params,
    place,
    render_table,
    training_need,
    weight_bytes,
)

DOCS = Path(__file__).resolve().parents[2] / "docs" / "node.md"
# hidden 8, 2 layers, MLP 16, 2 heads of 4, 1 KV head (GQA), vocab 10, untied head
TINY = ModelShape(hidden=8, layers=2, intermediate=16, heads=2, kv_heads=1, vocab=10)


def test_llama2_parameter_counts_are_the_published_ones() -> None:
    assert linear_params(LLAMA_7B) + other_params(LLAMA_7B) == 6_738_415_616
    assert linear_params(LLAMA_70B) + other_params(LLAMA_70B) == 68_976_648_192


def test_tiny_shape_by_hand() -> None:
    # per layer: q 8·8, k 8·4, v 8·4, o 8·8, gate 8·16, up 8·16, down 16·8 = 64+32+32+64+384
    assert linear_params(TINY) == 2 * 576
    assert other_params(TINY) == 10 * 8 + 10 * 8 + 5 * 8  # embedding, head, 2·2+1 norms
    # rank 2: 2·(8+8) + 2·(8+4)·2 + 2·(8+8) + 2·(8+16)·3 = 32 + 48 + 32 + 144 per layer
    assert lora_params(TINY, rank=2) == 2 * 256


def test_weight_bytes_per_mode_by_hand() -> None:
    linear, other = 1152, 200
    assert weight_bytes(TINY, "float32") == 4 * (linear + other)
    assert weight_bytes(TINY, "bfloat16") == 2 * (linear + other)
    # int8: 1 byte a weight + 4 per output row (8+4+4+8+16+16+8 = 64 rows a layer); rest fp32
    assert weight_bytes(TINY, "int8") == linear + 4 * 64 * 2 + 4 * other
    # nf4, per matrix: n/2, one byte per 64-block, 4 bytes per 256 blocks (a block at least)
    per_layer = (32 + 1 + 4) * 2 + (16 + 1 + 4) * 2 + (64 + 2 + 4) * 3
    assert weight_bytes(TINY, "nf4") == 2 * per_layer + 4 * other
    with pytest.raises(ValueError, match="`mode` is 'fp8'"):
        weight_bytes(TINY, "fp8")


def test_nf4_with_double_quantization_is_about_4_13_bits_a_weight() -> None:
    n = 4096 * 4096
    assert held_bytes(linear=n, other=0, mode="nf4") * 8 / n == pytest.approx(4.127, abs=1e-3)
    assert held_bytes(linear=n, other=3, mode="int8") == n + 12
    assert held_bytes(linear=n, other=3, mode="float16") == 2 * (n + 3)


def test_activations_by_hand() -> None:
    # 2 sequences × 3 tokens; per layer and token 5h + 3kv + 2h + 4i = 40 + 12 + 16 + 64 = 132
    tokens, per_token, logits = 6, 132, 6 * 10
    assert activation_bytes(TINY, batch=2, length=3, mode="bfloat16") == (
        2 * tokens * per_token * 2 + logits * (2 + 8)
    )
    assert activation_bytes(TINY, batch=2, length=3, mode="float32") == (
        2 * tokens * per_token * 4 + logits * (4 + 8)
    )
    assert activation_bytes(TINY, batch=2, length=3, mode="bfloat16", checkpointing=True) == (
        2 * tokens * 8 * 2 + tokens * per_token * 2 + logits * (2 + 8)
    )
    # quantized: fp32 like the residual stream the QLoRA preparation leaves
    assert activation_bytes(TINY, batch=2, length=3, mode="nf4") == activation_bytes(
        TINY, batch=2, length=3, mode="float32"
    )


def test_training_need_adds_weights_lora_state_and_activations() -> None:
    need = training_need(TINY, mode="nf4", rank=2, batch=2, length=3)
    assert need.lora == 512 * 16  # fp32 weight, gradient and AdamW's two moments
    assert need.total == need.weights + need.lora + need.activations


def test_no_gpu_means_cpu() -> None:
    assert place(model_bytes=GIB, free=[]).device == "cpu"


def test_a_model_that_fits_goes_on_the_gpu_with_most_free_memory() -> None:
    placed = place(model_bytes=20 * GIB, free=[30 * GIB, 70 * GIB])
    assert (placed.device, placed.max_memory) == ("cuda:1", None)


def test_a_model_too_large_for_one_gpu_is_spread_over_all() -> None:
    free = [80 * GIB, 80 * GIB, 40 * GIB]
    placed = place(model_bytes=130 * GIB, free=free)
    # each GPU keeps max(2 GiB, 5 %) for context, LoRA state and activations
    assert placed.max_memory == {0: 76 * GIB, 1: 76 * GIB, 2: 38 * GIB}
    assert placed.device == "cuda:0"
    assert "spread over GPUs 0, 1, 2" in placed.reason


def test_the_reserve_decides_at_the_edge() -> None:
    usable = 80 * GIB - 4 * GIB
    assert place(model_bytes=usable, free=[80 * GIB, 80 * GIB]).max_memory is None
    assert place(model_bytes=usable + 1, free=[80 * GIB, 80 * GIB]).max_memory is not None
    small = place(model_bytes=GIB, free=[GIB, 3 * GIB])  # 2 GiB reserve at least
    assert small.max_memory is None and small.device == "cuda:1"


def test_too_large_for_all_gpus_says_so_and_names_the_fix() -> None:
    placed = place(model_bytes=160 * GIB, free=[80 * GIB, 80 * GIB])
    assert placed.max_memory is None
    assert "does not fit on the 2 GPUs" in placed.reason and "`quantization`" in placed.reason
    single = place(model_bytes=100 * GIB, free=[80 * GIB])
    assert single.device == "cuda:0" and "does not fit" in single.reason


def test_docs_carry_the_computed_table() -> None:
    assert render_table() in DOCS.read_text()

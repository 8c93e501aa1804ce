"""What a node needs in memory to train LoRA on a base model, per precision; where the model goes.

Pure arithmetic (no torch), so the table in docs/node.md is computed, not typed, and the
placement decision can be tested against a made-up inventory of GPUs.

Counted for a Llama-style decoder (``ModelShape``), by tensor:

- **weights**: the linear layers (q, k, v, o, gate, up, down) at the mode's bytes per weight —
  fp32 4, bf16 2, int8 (LLM.int8: 1 per weight plus one fp32 scale per output row), nf4 (4 bits
  per weight plus, with double quantization, one 8-bit absmax per 64 weights and one fp32 scale
  per 256 absmax); everything else (embeddings, the LM head, norms) at fp32 in fp32 and in the
  quantized modes (peft's ``prepare_model_for_kbit_training`` casts it up), at bf16 in bf16;
- **LoRA**: ``r · (in + out)`` per targeted linear (peft's ``all-linear``: all seven per layer,
  never the LM head), fp32 weights, fp32 gradients and AdamW's two fp32 moments: 16 bytes each;
- **activations** kept for the backward pass at ``batch`` sequences of ``length`` tokens, in
  bf16 in bf16 and in fp32 otherwise — also in the quantized modes: the QLoRA preparation keeps
  the embeddings in fp32, so the residual stream and each 4-/8-bit layer's output (cast back to
  its input's dtype by bitsandbytes) are fp32: per layer and token the attention block keeps its
  input, the normed input, q, k, v, q and k after RoPE and the attention output
  (``5h + 3·kv``), the MLP block its input, the normed input, gate, up, act(gate) and their
  product (``2h + 4i``) — attention through SDPA's fused kernels (no ``s × s`` scores, as on
  CUDA); the logits once in that dtype and twice in fp32 (the upcast and the log-softmax
  the loss keeps). With gradient checkpointing only each layer's input is kept, plus one layer's
  activations during its recomputation.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

GIB = 1024**3
MODES = ("float32", "bfloat16", "int8", "nf4")  # how the base model's weights are held
NF4_BLOCK, NF4_BLOCK2 = 64, 256  # bitsandbytes' 4-bit block size; double quantization's block
LORA_STATE_BYTES = 16  # fp32 weight, gradient, AdamW exp_avg and exp_avg_sq


@dataclass(frozen=True)
class ModelShape:
    """A Llama-style decoder's dimensions (transformers' config names in :meth:`from_config`)."""

    hidden: int
    layers: int
    intermediate: int
    heads: int
    kv_heads: int
    vocab: int
    head_dim: int = 0  # 0: hidden // heads
    tied: bool = False  # the LM head shares the embedding's weights

    @property
    def q_dim(self) -> int:
        return self.heads * (self.head_dim or self.hidden // self.heads)

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * (self.head_dim or self.hidden // self.heads)

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> ModelShape:
        """From a Llama-family ``config.json`` (``num_key_value_heads`` defaults to the heads)."""
        heads = int(config["num_attention_heads"])
        return cls(
            hidden=int(config["hidden_size"]),
            layers=int(config["num_hidden_layers"]),
            intermediate=int(config["intermediate_size"]),
            heads=heads,
            kv_heads=int(config.get("num_key_value_heads") or heads),
            vocab=int(config["vocab_size"]),
            head_dim=int(config.get("head_dim") or 0),
            tied=bool(config.get("tie_word_embeddings", False)),
        )


# Llama-2's published configurations (6,738,415,616 and 68,976,648,192 parameters).
LLAMA_7B = ModelShape(hidden=4096, layers=32, intermediate=11008, heads=32, kv_heads=32,
                      vocab=32000)  # fmt: skip
LLAMA_70B = ModelShape(hidden=8192, layers=80, intermediate=28672, heads=64, kv_heads=8,
                       vocab=32000)  # fmt: skip


def linear_shapes(shape: ModelShape) -> list[tuple[int, int]]:
    """``(in, out)`` of one layer's seven linear maps: q, k, v, o, gate, up, down."""
    h, i = shape.hidden, shape.intermediate
    q, kv = shape.q_dim, shape.kv_dim
    return [(h, q), (h, kv), (h, kv), (q, h), (h, i), (h, i), (i, h)]


def linear_params(shape: ModelShape) -> int:
    """Weights of all decoder layers' linear maps (what bitsandbytes quantizes)."""
    return shape.layers * sum(n_in * n_out for n_in, n_out in linear_shapes(shape))


def other_params(shape: ModelShape) -> int:
    """Embedding, LM head (unless tied), the two norms per layer and the final norm."""
    head = 0 if shape.tied else shape.vocab * shape.hidden
    return shape.vocab * shape.hidden + head + (2 * shape.layers + 1) * shape.hidden


def lora_params(shape: ModelShape, *, rank: int) -> int:
    """LoRA parameters of rank ``rank`` on every linear map of every layer (peft all-linear)."""
    return shape.layers * sum(rank * (n_in + n_out) for n_in, n_out in linear_shapes(shape))


def _quantized_bytes(n_in: int, n_out: int, mode: str) -> float:
    n = n_in * n_out
    if mode == "int8":  # int8 weights, one fp32 scale per output row
        return n + 4 * n_out
    blocks = math.ceil(n / NF4_BLOCK)  # nf4: 4 bits, 8-bit absmax per block, fp32 per 256 blocks
    return n / 2 + blocks + 4 * math.ceil(blocks / NF4_BLOCK2)


def _check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ValueError(f"`mode` is {mode!r}: use one of {', '.join(MODES)}")


def _other_element(mode: str) -> int:
    return 2 if mode in ("bfloat16", "float16") else 4  # quantized modes keep the rest in fp32


def weight_bytes(shape: ModelShape, mode: str) -> int:
    """Bytes of the base model's weights when held in ``mode`` (see the module doc)."""
    _check_mode(mode)
    other = other_params(shape) * _other_element(mode)
    if mode in ("float32", "bfloat16"):
        return linear_params(shape) * (4 if mode == "float32" else 2) + other
    per_layer = sum(_quantized_bytes(n_in, n_out, mode) for n_in, n_out in linear_shapes(shape))
    return round(shape.layers * per_layer) + other


def held_bytes(*, linear: int, other: int, mode: str) -> int:
    """Bytes of any model with ``linear`` quantizable and ``other`` parameters held in ``mode``
    (``float16`` too); quantized linear weights are counted as one matrix (row scales left out)."""
    if mode == "float16":
        return 2 * (linear + other)
    _check_mode(mode)
    if mode in ("float32", "bfloat16"):
        return (4 if mode == "float32" else 2) * (linear + other)
    if mode == "int8":
        return linear + 4 * other
    return round(_quantized_bytes(linear, 1, mode)) + 4 * other


def activation_bytes(
    shape: ModelShape, *, batch: int, length: int, mode: str, checkpointing: bool = False
) -> int:
    """Activations kept for the backward pass of one step (see the module doc)."""
    element = 2 if mode == "bfloat16" else 4  # quantized: the residual stream is fp32 (module doc)
    tokens = batch * length
    h, kv, i = shape.hidden, shape.kv_dim, shape.intermediate
    per_layer = tokens * (5 * h + 3 * kv + 2 * h + 4 * i) * element
    logits = tokens * shape.vocab * (element + 4 + 4)
    if checkpointing:
        return shape.layers * tokens * h * element + per_layer + logits
    return shape.layers * per_layer + logits


@dataclass(frozen=True)
class Need:
    """Bytes one node needs to train, by part."""

    weights: int
    lora: int
    activations: int

    @property
    def total(self) -> int:
        return self.weights + self.lora + self.activations


def training_need(
    shape: ModelShape, *, mode: str, rank: int, batch: int, length: int,
    checkpointing: bool = False,
) -> Need:  # fmt: skip
    """Weights, LoRA (weights, gradients, AdamW state) and activations for one training step."""
    return Need(
        weights=weight_bytes(shape, mode),
        lora=lora_params(shape, rank=rank) * LORA_STATE_BYTES,
        activations=activation_bytes(
            shape, batch=batch, length=length, mode=mode, checkpointing=checkpointing
        ),
    )


@dataclass(frozen=True)
class Placement:
    """Where the base model goes: one device, or spread over GPUs (``max_memory`` per GPU)."""

    device: str  # "cpu" or "cuda:N"; with a device map, the GPU the inputs go to
    max_memory: dict[int, int] | None  # GPU index -> bytes accelerate may fill; None: one device
    reason: str


def place(
    *, model_bytes: int, free: Sequence[int], reserve_fraction: float = 0.05,
    reserve_min: int = 2 * GIB,
) -> Placement:  # fmt: skip
    """Decide where a model of ``model_bytes`` goes, given each visible GPU's free bytes.

    Each GPU keeps ``max(reserve_min, reserve_fraction · free)`` for the CUDA context, the LoRA
    and its optimizer state and activations. The model goes on the GPU with the most free memory
    if it fits there; else, if it fits in all of them together, it is spread over them
    (accelerate's ``device_map="auto"`` with these ``max_memory`` budgets); else on that one GPU
    anyway (loading may run out of memory: the reason says so).
    """
    if not free:
        return Placement("cpu", None, "no CUDA device")
    budgets = [max(0, f - max(reserve_min, int(reserve_fraction * f))) for f in free]
    best = max(range(len(free)), key=lambda i: (budgets[i], -i))
    size = f"{model_bytes / GIB:.1f} GiB"
    if model_bytes <= budgets[best] or len(free) == 1:
        fits = model_bytes <= budgets[best]
        why = "fits on" if fits else "does not fit (it may run out of memory) on"
        return Placement(f"cuda:{best}", None,
                         f"the base model ({size}) {why} GPU {best} ({budgets[best] / GIB:.1f} "
                         "GiB usable)")  # fmt: skip
    if model_bytes <= sum(budgets):
        used = {i: b for i, b in enumerate(budgets) if b > 0}
        first = min(used)
        return Placement(f"cuda:{first}", used,
                         f"the base model ({size}) does not fit on one GPU: spread over GPUs "
                         f"{', '.join(map(str, used))} ({sum(used.values()) / GIB:.1f} GiB "
                         "usable)")  # fmt: skip
    return Placement(f"cuda:{best}", None,
                     f"the base model ({size}) does not fit on the {len(free)} GPUs together "
                     f"({sum(budgets) / GIB:.1f} GiB usable; it may run out of memory): set "
                     "`quantization` to nf4")  # fmt: skip


def render_table(*, rank: int = 16, batch: int = 8, length: int = 128) -> str:
    """docs/node.md's memory table: 7B and 70B Llama-2 shapes, every mode, in GiB."""
    rows = [
        f"| model | weights | GiB weights | GiB LoRA r={rank} + AdamW | GiB activations "
        f"(batch {batch} × {length}) | with checkpointing | GiB total |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, shape in (("Llama-2 7B", LLAMA_7B), ("Llama-2 70B", LLAMA_70B)):
        for mode in MODES:
            need = training_need(shape, mode=mode, rank=rank, batch=batch, length=length)
            ckpt = activation_bytes(shape, batch=batch, length=length, mode=mode,
                                    checkpointing=True)  # fmt: skip
            cells = [need.weights, need.lora, need.activations, ckpt, need.total]
            rows.append(f"| {name} | {mode} | " + " | ".join(f"{c / GIB:.1f}" for c in cells)
                        + " |")  # fmt: skip
    return "\n".join(rows) + "\n"


if __name__ == "__main__":
    sys.stdout.write(render_table())

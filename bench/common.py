"""Shared pieces of the benchmark suite: figures with their goals, timing, peak memory, models."""

from __future__ import annotations

import gc
import resource
import time
import tracemalloc
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

# SmolLM2-135M's shapes (HuggingFaceTB/SmolLM2-135M config.json); weights random, no download.
SMOLLM2_135M: dict[str, Any] = {
    "hidden_size": 576,
    "intermediate_size": 1536,
    "num_hidden_layers": 30,
    "num_attention_heads": 9,
    "num_key_value_heads": 3,
    "vocab_size": 49152,
    "max_position_embeddings": 2048,
    "rms_norm_eps": 1e-5,
    "rope_theta": 100000.0,
    "tie_word_embeddings": True,
}


@dataclass(frozen=True)
class Figure:
    """One benchmark figure: what was measured, its value, and the goal it is held to."""

    section: str
    name: str
    value: float
    unit: str
    goal: str = ""  # e.g. "<= 1.02"; empty: reported only
    detail: str = ""

    @property
    def meets(self) -> bool | None:
        if not self.goal:
            return None
        op, bound = self.goal.split()
        return self.value <= float(bound) if op == "<=" else self.value >= float(bound)

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "meets": self.meets}


def timed(fn: Callable[[], T]) -> tuple[T, float]:
    """``fn()`` and its wall time in seconds."""
    start = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - start


def traced(fn: Callable[[], T]) -> tuple[T, float, int]:
    """``fn()``, its wall time and the peak bytes it allocated (numpy and Python, tracemalloc)."""
    gc.collect()
    tracemalloc.start()
    try:
        value, seconds = timed(fn)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return value, seconds, peak


def max_rss_bytes() -> int:
    """This process's peak resident memory so far: ``VmHWM`` (reset by exec, unlike
    ``ru_maxrss``, which a child started by fork + exec inherits from its parent)."""
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def smollm_shape_model(folder: Path, *, seed: int = 0) -> Path:
    """Save a randomly initialised Llama with SmolLM2-135M's shapes and the embedded model's
    byte tokenizer (its ids fit the 49152-entry vocabulary) into ``folder``; return it."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from client.model.loading import embedded_model_dir

    if (folder / "model.safetensors").is_file():
        return folder
    tokenizer = AutoTokenizer.from_pretrained(embedded_model_dir())
    config = LlamaConfig(
        **SMOLLM2_135M,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder

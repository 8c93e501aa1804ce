"""Shared fixtures: offline, no telemetry, tiny models built from a config."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# numpy's OpenBLAS: one thread. The suite's matrices are small, and on shared cores two BLAS
# threads wait on each other: a 128 x 157 QR took 0.85 s instead of 3 ms at load 20 on 2 cores.
# Set before anything imports numpy (pytest's plugins do not).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

REPO = Path(__file__).resolve().parents[1]
EMBEDDED = REPO / "client" / "assets" / "base-model"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """GPU tests run only where CUDA is present."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def empty_base_cache() -> Iterator[None]:
    """The node's base-model cache (client/model/cache.py) empty before and after the test."""
    from client.model import cache as base_cache

    base_cache.release()
    base_cache._idle.clear()
    yield
    base_cache.release()
    base_cache._idle.clear()


@pytest.fixture(scope="session")
def embedded_dir() -> Path:
    assert (EMBEDDED / "model.safetensors").is_file(), "run scripts/make_base_model.py"
    return EMBEDDED


@pytest.fixture(scope="session")
def tiny_gpt2_dir(tmp_path_factory: pytest.TempPathFactory, embedded_dir: Path) -> Path:
    """A randomly initialised 2-layer GPT-2 (Conv1D layers) with the byte tokenizer."""
    import torch
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    out = tmp_path_factory.mktemp("gpt2")
    tokenizer = AutoTokenizer.from_pretrained(embedded_dir)
    torch.manual_seed(0)
    config = GPT2Config(
        vocab_size=len(tokenizer), n_positions=128, n_embd=32, n_layer=2, n_head=2,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
    )  # fmt: skip
    GPT2LMHeadModel(config).save_pretrained(out)
    for name in TOKENIZER_FILES:
        shutil.copy(embedded_dir / name, out / name)
    return out

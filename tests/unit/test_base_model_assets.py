"""The embedded base model in client/assets/base-model loads offline and was pretrained."""

from __future__ import annotations

import math
from pathlib import Path
from pydoc_data.topics import topics

import pytest
import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

ASSET_DIR = Path(__file__).resolve().parents[2] / "client" / "assets" / "base-model"
EXPECTED_FILES = {
    "README.md",
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
}
ROUND_TRIP_TEXTS = (
    "Pt 67F admitted with chest pain; troponin 0.04 ng/mL.",
    "  leading spaces,\ttabs and\r\nCRLF line ends  ",
    "caf\u00e9 na\u00efve \u00fcber \u00f1and\u00fa",
    "\u65e5\u672c\u8a9e\u306e\u30c6\u30ad\u30b9\u30c8",
    "\u0420\u0443\u0441\u0441\u043a\u0438\u0439 \u0395\u03bb\u03bb\u03b7\u03bd\u03b9\u03ba\u03ac",
    "emoji \U0001f389\U0001f44d, combining e\u0301, NUL \x00 end",
)


@pytest.fixture(scope="module")
def tokenizer() -> PreTrainedTokenizerBase:
    return AutoTokenizer.from_pretrained(ASSET_DIR, local_files_only=True)


@pytest.fixture(scope="module")
def model() -> PreTrainedModel:
    loaded = AutoModelForCausalLM.from_pretrained(ASSET_DIR, local_files_only=True)
    return loaded.eval()


def test_only_loading_files_are_shipped() -> None:
    assert {p.name for p in ASSET_DIR.iterdir()} == EXPECTED_FILES


def test_weights_are_small() -> None:
    assert (ASSET_DIR / "model.safetensors").stat().st_size < 5_000_000


@pytest.mark.parametrize("text", ROUND_TRIP_TEXTS)
def test_utf8_round_trip(tokenizer: PreTrainedTokenizerBase, text: str) -> None:
    ids = tokenizer(text)["input_ids"]
    assert tokenizer.decode(ids, skip_special_tokens=True) == text


@pytest.mark.parametrize("text", ROUND_TRIP_TEXTS)
def test_one_token_per_byte(tokenizer: PreTrainedTokenizerBase, text: str) -> None:
    assert tokenizer(text, add_special_tokens=False)["input_ids"] == list(text.encode("utf-8"))


def test_special_tokens(tokenizer: PreTrainedTokenizerBase) -> None:
    assert len(tokenizer) == 259
    assert (tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token) == (
        "<s>",
        "</s>",
        "<pad>",
    )
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id) == (
        256,
        257,
        258,
    )
    assert tokenizer("a")["input_ids"] == [256, 97]


def test_config_shape(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> None:
    config = model.config
    assert config.model_type == "llama"
    assert (config.hidden_size, config.intermediate_size) == (128, 352)
    assert (config.num_hidden_layers, config.num_attention_heads) == (2, 4)
    assert (config.num_key_value_heads, config.max_position_embeddings) == (4, 256)
    assert config.vocab_size == len(tokenizer)
    assert config.tie_word_embeddings
    assert (config.bos_token_id, config.eos_token_id, config.pad_token_id) == (256, 257, 258)
    embedding = model.get_input_embeddings().weight
    assert model.get_output_embeddings().weight.data_ptr() == embedding.data_ptr()
    assert embedding.dtype == torch.float32


def test_model_was_pretrained(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> None:
    text = topics["if"]
    batch = tokenizer(text, return_tensors="pt", truncation=True, max_length=256)
    with torch.no_grad():
        loss = model(**batch, labels=batch["input_ids"]).loss.item()
    assert loss < 3.0 < math.log(len(tokenizer))

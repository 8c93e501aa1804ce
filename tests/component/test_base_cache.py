"""The node's base-model cache: a speed-up only — results equal a fresh load, message after message;
and the low-precision node keeps the global update (client/model/cache.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from numpy.typing import NDArray

from client.model import cache as base_cache
from client.model import merged as merged_weights
from client.model.loading import attach_lora, load_base, lora_factors, merge_global_adapter
from client.model.node_mode import NodeMode, start_lora
from client.settings import TrainConfig
from client.training import train_local
from strategies import protocol as p

CPU = torch.device("cpu")
IDS = torch.tensor([[1, 72, 101, 108, 108, 111, 32, 119, 111, 114, 108, 100, 2]])


pytestmark = pytest.mark.usefixtures("empty_base_cache")


def global_adapter(model_dir: str, *, rank: int, scale: float, seed: int) -> dict[str, NDArray]:
    """Random global factors (scaling 1) for every linear module of the model."""
    model, _ = load_base(model_dir, device=CPU)
    shapes = lora_factors(attach_lora(model, rank=rank, alpha=rank, target_modules="all-linear",
                                      seed=0))  # fmt: skip
    rng = np.random.default_rng(seed)
    return {k: (scale * rng.standard_normal(v.shape)).astype(np.float32) for k, v in shapes.items()}


def fresh_logits(model_dir: str, arrays: dict[str, NDArray]) -> torch.Tensor:
    """Today's route: a fresh fp32 load with the global adapter merged by peft."""
    model, _ = load_base(model_dir, device=CPU)
    merged = merge_global_adapter(model, arrays)
    with torch.no_grad():
        return merged(input_ids=IDS).logits


def message(model_dir: str, arrays: dict[str, NDArray], *, train: bool, dtype: torch.dtype
            = torch.float32) -> torch.Tensor:  # fmt: skip
    """One node message on the cached model: apply the global, (train a LoRA,) score; release."""
    model, tokenizer = base_cache.checkout(model_dir, device=CPU, dtype=dtype,
                                           gradient_checkpointing=train)  # fmt: skip
    try:
        base_cache.apply_global(model, arrays)
        with torch.no_grad():
            logits = model(input_ids=IDS).logits.float()
        if train:
            peft_model = attach_lora(model, rank=4, alpha=8, target_modules="all-linear", seed=1)
            rows = [IDS[0].tolist()] * 4
            config = TrainConfig(local_steps=2, batch_size=2)
            train_local(peft_model, rows, config, pad_id=tokenizer.pad_token_id, seed=0)
        return logits
    finally:
        base_cache.release()


@pytest.mark.parametrize("fixture", ["embedded_dir", "tiny_gpt2_dir"])
def test_cached_messages_match_a_fresh_load(fixture: str, request: pytest.FixtureRequest) -> None:
    model_dir = str(request.getfixturevalue(fixture))
    globals_ = [global_adapter(model_dir, rank=r, scale=0.05, seed=r) for r in (8, 16, 4)]
    first = message(model_dir, globals_[0], train=True)
    cached = next(iter(base_cache._idle.values())).model
    for arrays in [*globals_[1:], globals_[0]]:
        logits = message(model_dir, arrays, train=True)
        assert torch.equal(logits, fresh_logits(model_dir, arrays))  # bit for bit
    assert torch.equal(first, fresh_logits(model_dir, globals_[0]))
    assert next(iter(base_cache._idle.values())).model is cached  # reused, not reloaded


def test_the_next_message_after_a_failed_one_gets_the_base_weights(embedded_dir: Path) -> None:
    model, _ = base_cache.checkout(str(embedded_dir), device=CPU, dtype=torch.float32,
                                   gradient_checkpointing=False)  # fmt: skip
    base_cache.apply_global(model, global_adapter(str(embedded_dir), rank=4, scale=0.1, seed=0))
    attach_lora(model, rank=4, alpha=8, target_modules="all-linear", seed=0)
    base_cache.release()  # as the ClientApp does when a handler raises
    cached = next(iter(base_cache._idle.values())).model
    assert not hasattr(cached, "peft_config")
    assert_loaded_weights(str(embedded_dir))


def test_cache_off_loads_per_message(embedded_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(base_cache.ENV_SWITCH, "0")
    model_dir = str(embedded_dir)
    message(model_dir, global_adapter(model_dir, rank=4, scale=0.1, seed=0), train=False)
    assert not base_cache._idle


def test_unknown_module_is_a_clear_error(embedded_dir: Path) -> None:
    model, _ = base_cache.checkout(str(embedded_dir), device=CPU, dtype=torch.float32,
                                   gradient_checkpointing=False)  # fmt: skip
    bad = {"model.layers.9.q_proj.lora_A.weight": np.zeros((2, 4), np.float32),
           "model.layers.9.q_proj.lora_B.weight": np.zeros((4, 2), np.float32)}  # fmt: skip
    with pytest.raises(ValueError, match="different base models"):
        base_cache.apply_global(model, bad)
    base_cache.release()


def products(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The rank of every product added into a weight from now on (client/model/merged.py)."""
    ranks: list[int] = []
    real_add = merged_weights._add_product

    def counted(w: torch.Tensor, a: torch.Tensor, *x: object, **k: object) -> None:
        ranks.append(a.shape[0])
        real_add(w, a, *x, **k)  # type: ignore[arg-type]

    monkeypatch.setattr(merged_weights, "_add_product", counted)
    return ranks


def kept_message(model_dir: str, arrays: dict[str, NDArray] | None) -> torch.Tensor:
    """One message as the ClientApp runs it: the global adapter given to ``checkout``."""
    model, _ = base_cache.checkout(model_dir, device=CPU, dtype=torch.float32,
                                   gradient_checkpointing=False, global_adapter=arrays)  # fmt: skip
    try:
        with torch.no_grad():
            return model(input_ids=IDS).logits
    finally:
        base_cache.release()


def assert_loaded_weights(model_dir: str) -> None:
    """The next message without a global adapter gets the cached model with its loaded weights."""
    cached = next(iter(base_cache._idle.values())).model
    model, _ = base_cache.checkout(model_dir, device=CPU, dtype=torch.float32,
                                   gradient_checkpointing=False)  # fmt: skip
    try:
        assert model is cached
        fresh, _ = load_base(model_dir, device=CPU)
        assert model.state_dict().keys() == fresh.state_dict().keys()
        for key, value in fresh.state_dict().items():
            assert torch.equal(model.state_dict()[key], value), key
    finally:
        base_cache.release()


@pytest.mark.parametrize("fixture", ["embedded_dir", "tiny_gpt2_dir"])
def test_the_same_global_adapter_stays_merged_between_messages(
    fixture: str, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    model_dir = str(request.getfixturevalue(fixture))
    first, second = (global_adapter(model_dir, rank=r, scale=0.05, seed=r) for r in (8, 12))
    merges = products(monkeypatch)
    assert torch.equal(kept_message(model_dir, first), fresh_logits(model_dir, first))
    modules = len(merges)
    assert modules > 0
    # evaluate of round r, then train of round r+1: the same adapter, the same bytes
    again = {k: v.copy() for k, v in first.items()}
    assert torch.equal(kept_message(model_dir, again), fresh_logits(model_dir, first))
    assert len(merges) == modules  # not merged again
    assert torch.equal(kept_message(model_dir, second), fresh_logits(model_dir, second))
    assert len(merges) == 2 * modules
    changed = {k: v.copy() for k, v in second.items()}
    key = next(iter(changed))
    changed[key][0, 0] += 1e-3  # one value differs: merged afresh
    assert torch.equal(kept_message(model_dir, changed), fresh_logits(model_dir, changed))
    assert len(merges) == 3 * modules
    kept_message(model_dir, None)  # a message without the global adapter: the loaded weights
    assert_loaded_weights(model_dir)


def test_a_failed_merge_leaves_the_loaded_weights(embedded_dir: Path) -> None:
    model_dir = str(embedded_dir)
    kept_message(model_dir, global_adapter(model_dir, rank=4, scale=0.1, seed=0))
    good = global_adapter(model_dir, rank=4, scale=0.1, seed=1)
    bad = {**good, "model.layers.9.q_proj.lora_A.weight": np.zeros((4, 4), np.float32),
           "model.layers.9.q_proj.lora_B.weight": np.zeros((4, 4), np.float32)}  # fmt: skip
    with pytest.raises(ValueError, match="different base models"):
        base_cache.checkout(model_dir, device=CPU, dtype=torch.float32,
                            gradient_checkpointing=False, global_adapter=bad)  # fmt: skip
    base_cache.release()  # as the ClientApp does when a handler raises
    assert_loaded_weights(model_dir)
    assert not merged_weights.same(good, bad)


def test_continue_merged_after_evaluate_takes_out_only_the_node_components(
    embedded_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """flora: round r's evaluate merges the global; round r+1's train message (same global)
    only subtracts the node's first k components — one rank-k pass, no copy-back — and starts
    at the global model, bitwise as a fresh load does it."""
    model_dir = str(embedded_dir)
    arrays = global_adapter(model_dir, rank=12, scale=0.05, seed=3)
    kept_message(model_dir, arrays)  # round r's evaluate message
    ranks = products(monkeypatch)
    copies: list[str] = []
    real_restore = merged_weights.MergedWeights.restore

    def restore(
        self: merged_weights.MergedWeights, model: object, *, keep: set[str] | None = None
    ) -> None:
        copies.extend(sorted(self.dirty - (keep or set())))
        real_restore(self, model, keep=keep)  # type: ignore[arg-type]

    monkeypatch.setattr(merged_weights.MergedWeights, "restore", restore)

    def train_start(cache_on: bool) -> dict[str, torch.Tensor]:
        monkeypatch.setenv(base_cache.ENV_SWITCH, "1" if cache_on else "0")
        model, _ = base_cache.checkout(model_dir, device=CPU, dtype=torch.float32,
                                       gradient_checkpointing=False, global_adapter=arrays,
                                       merge_only=True)  # fmt: skip
        try:
            assert base_cache.holds_merged(model)
            peft = start_lora(model, arrays, mode=NodeMode(p.CONTINUE_MERGED), rank=4, alpha=8.0,
                              target_modules="all-linear", seed=1, public_a_seed=None)  # fmt: skip
            return {k: v.detach().clone() for k, v in peft.state_dict().items()}
        finally:
            base_cache.release()

    cached = train_start(cache_on=True)
    assert ranks and set(ranks) == {4} and not copies  # only the head: rank 4, nothing copied
    fresh = train_start(cache_on=False)  # a fresh load: merge the whole global, then the head
    assert cached.keys() == fresh.keys()
    for key, value in fresh.items():
        assert torch.equal(cached[key], value), key


def test_the_held_global_adapter_is_compared_by_its_bytes() -> None:
    held = merged_weights.frozen({"a": np.array([0.0, np.nan, 1.5], np.float32)})
    assert merged_weights.same(held, {"a": np.array([0.0, np.nan, 1.5], np.float32)})
    assert not merged_weights.same(held, {"a": np.array([-0.0, np.nan, 1.5], np.float32)})
    assert not merged_weights.same(held, {"a": np.array([0.0, np.nan, 1.5], np.float64)})
    assert not merged_weights.same(held, {"a": np.array([[0.0, np.nan, 1.5]], np.float32)})
    assert not merged_weights.same(held, {"b": np.array([0.0, np.nan, 1.5], np.float32)})
    source = np.array([1.0, 2.0], np.float32)
    kept = merged_weights.frozen({"a": source})
    source[0] = 5.0  # the caller changes its array later: what is held does not change
    assert not merged_weights.same(kept, {"a": source}) and not kept["a"].flags.writeable

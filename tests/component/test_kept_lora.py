"""The node's LoRA layers kept attached between messages (client/model/kept_lora.py): every reply
is bitwise the one a fresh load and a fresh peft attach give, message after message, in every
mode that trains a LoRA; a re-drawn LoRA is bitwise a fresh one, and so is the RNG after it."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from flwr.app import ConfigRecord, Context, Message, RecordDict

import client.privacy.dp_sgd as dp_sgd
import client.privacy.round as privacy_round
from client.app import app as client_app
from client.model import cache as base_cache
from client.model import kept_lora
from client.model.loading import attach_lora, load_base, lora_factors
from client.privacy.noise import SecureRandom
from client.settings import TrainConfig
from strategies import protocol as p
from strategies.math.factors import A_SUFFIX

CPU = torch.device("cpu")
NODE_RANK = 4

# strategy or setting -> (node mode, instruction extras, run-config extras, node-config extras)
MODES: dict[str, tuple[str, dict[str, Any], dict[str, Any], dict[str, Any]]] = {
    "flora": (p.CONTINUE_MERGED, {}, {}, {}),
    "flora-fresh": (p.MERGE, {}, {}, {}),
    "ffa": (p.MERGE, {p.SHARED_A_SEED: 11, p.FREEZE_A: True}, {}, {}),
    "dp-sgd": (p.MERGE, {}, {"privacy": "dp-sgd", "dp-noise-multiplier": 1.0}, {}),
    "dp-lora": (p.MERGE, {}, {"privacy": "dp-lora", "dp-noise-multiplier": 1.0}, {}),
    "personal": (p.CONTINUE_MERGED, {}, {}, {"personal": "private-lora"}),
    "flora-checkpointing": (p.CONTINUE_MERGED, {}, {}, {"gradient-checkpointing": True}),
    "flora-bfloat16": (p.CONTINUE_MERGED, {}, {}, {"dtype": "bfloat16"}),  # global beside W
}


pytestmark = pytest.mark.usefixtures("empty_base_cache")


@pytest.fixture
def _fixed_noise(monkeypatch: pytest.MonkeyPatch) -> None:
    """The same DP noise in both routes (a node draws it from fresh OS entropy)."""

    def fixed(key: bytes | None = None) -> SecureRandom:
        return SecureRandom(key or hashlib.sha256(b"test").digest())

    monkeypatch.setattr(privacy_round, "SecureRandom", fixed)
    monkeypatch.setattr(dp_sgd, "_source", lambda seed: fixed())


def _global(model_dir: Path, *, rank: int, seed: int) -> dict[str, np.ndarray]:
    """A random global adapter (scaling 1) of rank ``rank`` on every linear module."""
    model, _ = load_base(str(model_dir), device=CPU)
    shapes = lora_factors(attach_lora(model, rank=1, alpha=1, target_modules="all-linear", seed=0))
    rng = np.random.default_rng(seed)
    return {
        k: (0.02 * rng.standard_normal((rank, v.shape[1]) if k.endswith(A_SUFFIX)
                                      else (v.shape[0], rank))).astype(np.float32)
        for k, v in shapes.items()
    }  # fmt: skip


def _message(kind: str, rnd: int, arrays: dict[str, np.ndarray], extra: dict[str, Any]) -> Message:
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 1
    config = TrainConfig(local_steps=2, batch_size=4, max_length=48, server_round=rnd)
    instruction = ConfigRecord({**config.to_config(), **extra})
    content = RecordDict({p.ARRAYS: p.to_record(arrays), p.CONFIG: instruction})
    msg = Message(content, dst_node_id=7, message_type=kind, group_id=str(rnd))
    msg.metadata.__dict__["_message_id"] = f"m{rnd}{kind}"
    return msg


def _replies(model_dir: Path, strategy: str, state: Path) -> list[dict[str, Any]]:
    """Round 0's evaluate message (the first a node gets: it loads the model, and the cache
    builds the LoRA layers and the weights' copies then, `warm`), then train and evaluate
    messages of rounds 1 and 2 (a new global adapter each round); each reply's content without
    its timings."""
    mode, extra, run_extra, node_extra = MODES[strategy]
    run = {"base-model": str(model_dir), "synth-train-examples": 16, "synth-eval-examples": 8,
           **run_extra}  # fmt: skip
    node = {"partition-id": 1, "lora-rank": NODE_RANK, "num-threads": 1, "state-dir": str(state),
            **node_extra}  # fmt: skip
    found = []
    both = ("train", "evaluate")
    rounds = [(0, 0, ("evaluate",)), (1, 2 * NODE_RANK, both), (2, NODE_RANK // 2, both)]
    # round 2: some A rows re-drawn
    for rnd, rank, kinds in rounds:
        arrays = _global(model_dir, rank=rank, seed=rnd) if rank else {}
        for kind in kinds:
            context = Context(run_id=1, node_id=7, node_config=node, state=RecordDict(),
                              run_config=run)  # fmt: skip
            msg = _message(kind, rnd, arrays, {p.NODE_MODE: mode, **extra})
            reply = client_app(msg, context)
            assert not reply.has_error(), reply.error.reason
            found.append(_content(reply.content))
    return found


def _content(content: RecordDict) -> dict[str, Any]:
    arrays = {f"{r}/{k}": (v.dtype, v.shape, v.data) for r, rec in content.array_records.items()
              for k, v in rec.items()}  # fmt: skip
    metrics = {f"{r}/{k}": v for r, rec in content.metric_records.items() for k, v in rec.items()
               if k != p.TRAIN_SECONDS}  # fmt: skip
    configs = {f"{r}/{k}": v for r, rec in content.config_records.items() for k, v in rec.items()}
    return {"arrays": arrays, "metrics": metrics, "configs": configs}


@pytest.mark.usefixtures("_fixed_noise")
@pytest.mark.parametrize("strategy", list(MODES))
def test_replies_with_kept_layers_are_bitwise_those_of_a_fresh_load(
    embedded_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, strategy: str
) -> None:
    monkeypatch.setenv(base_cache.ENV_SWITCH, "0")  # a fresh load and attach per message
    fresh = _replies(embedded_dir, strategy, tmp_path / "fresh")
    monkeypatch.setenv(base_cache.ENV_SWITCH, "1")
    cached = _replies(embedded_dir, strategy, tmp_path / "cached")
    assert len(cached) == len(fresh) == 5
    for i, (got, want) in enumerate(zip(cached, fresh, strict=True)):
        assert got["arrays"] == want["arrays"], f"message {i}: factors differ"
        assert got["metrics"] == want["metrics"], f"message {i}"
        assert got["configs"] == want["configs"], f"message {i}"
    trains = [r for r in cached if any(k.startswith(p.ARRAYS) for k in r["arrays"])]
    assert len(trains) == 2 and trains[0]["arrays"] != trains[1]["arrays"]
    (entry,) = base_cache._idle.values()
    assert (entry.lora is None) == (strategy == "dp-sgd")  # dp-sgd: opacus gets fresh layers


def test_a_re_drawn_lora_and_the_rng_after_it_are_those_of_a_fresh_attach(
    embedded_dir: Path,
) -> None:
    def fresh(seed: int) -> tuple[dict[str, np.ndarray], torch.Tensor, set[str]]:
        model, _ = load_base(str(embedded_dir), device=CPU)
        peft_model = attach_lora(model, rank=3, alpha=6, target_modules="all-linear", seed=seed)
        trainable = {n for n, q in peft_model.named_parameters() if q.requires_grad}
        return lora_factors(peft_model), torch.random.get_rng_state(), trainable

    model, _ = base_cache.checkout(str(embedded_dir), device=CPU, dtype=torch.float32,
                                   gradient_checkpointing=False)  # fmt: skip
    first = base_cache.attach_lora(model, rank=3, alpha=6, target_modules="all-linear", seed=5)
    with torch.no_grad():
        for _, param in first.named_parameters():
            param.add_(1.0)  # trained
    base_cache.release()
    model, _ = base_cache.checkout(str(embedded_dir), device=CPU, dtype=torch.float32,
                                   gradient_checkpointing=False)  # fmt: skip
    again = base_cache.attach_lora(model, rank=3, alpha=6, target_modules="all-linear", seed=9)
    assert again is first  # the layers were kept
    got, got_rng = lora_factors(again), torch.random.get_rng_state()
    want, want_rng, want_trainable = fresh(9)
    assert got.keys() == want.keys()
    assert all(np.array_equal(got[k], want[k]) for k in want)
    assert torch.equal(got_rng, want_rng)
    trainable = {n for n, q in again.named_parameters() if q.requires_grad}
    assert trainable == want_trainable and all(".lora_" in n for n in trainable)


def test_parked_layers_forward_the_base_model_bitwise(embedded_dir: Path) -> None:
    ids = torch.tensor([[1, 72, 101, 108, 108, 111, 2]])
    model, _ = load_base(str(embedded_dir), device=CPU)
    with torch.no_grad():
        want = model(input_ids=ids).logits
    model, _ = base_cache.checkout(str(embedded_dir), device=CPU, dtype=torch.float32,
                                   gradient_checkpointing=False)  # fmt: skip
    peft_model = base_cache.attach_lora(model, rank=3, alpha=6, target_modules="all-linear", seed=1)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if ".lora_B." in name:
                param.add_(1.0)  # a LoRA that would change every output
    base_cache.release()
    model, _ = base_cache.checkout(str(embedded_dir), device=CPU, dtype=torch.float32,
                                   gradient_checkpointing=False)  # fmt: skip
    assert kept_lora.layers(model)  # still attached, switched off
    with torch.no_grad():
        got = model(input_ids=ids).logits
    assert torch.equal(got, want)


# peft warns about the second attach this test makes on purpose (a model changed behind the cache).
@pytest.mark.filterwarnings("ignore:You are trying to modify a model with PEFT:UserWarning")
@pytest.mark.filterwarnings("ignore:Already found a `peft_config` attribute:UserWarning")
def test_layers_peft_changed_behind_the_cache_are_dropped_not_reused(embedded_dir: Path) -> None:
    def checkout() -> torch.nn.Module:
        model, _ = base_cache.checkout(str(embedded_dir), device=CPU, dtype=torch.float32,
                                       gradient_checkpointing=False)  # fmt: skip
        return model

    base_cache.attach_lora(checkout(), rank=3, alpha=6, target_modules="all-linear", seed=1)
    base_cache.release()
    attach_lora(checkout(), rank=2, alpha=6, target_modules="all-linear", seed=1)  # peft directly
    base_cache.release()
    (entry,) = base_cache._idle.values()
    assert entry.lora is None and not kept_lora.layers(entry.model)


@pytest.mark.parametrize("privacy", ["none", "dp-sgd"])
def test_the_first_evaluate_message_builds_the_layers_and_copies_with_the_load(
    embedded_dir: Path, tmp_path: Path, privacy: str
) -> None:
    run: dict[str, Any] = {"base-model": str(embedded_dir), "synth-eval-examples": 4}
    if privacy == "dp-sgd":
        run |= {"privacy": "dp-sgd", "dp-noise-multiplier": 1.0}
    node = {"partition-id": 1, "lora-rank": NODE_RANK, "num-threads": 1, "state-dir": str(tmp_path)}
    context = Context(run_id=1, node_id=7, node_config=node, state=RecordDict(), run_config=run)
    reply = client_app(_message("evaluate", 0, {}, {}), context)
    assert not reply.has_error(), reply.error.reason
    (entry,) = base_cache._idle.values()
    if privacy == "dp-sgd":  # opacus gets fresh layers each round: nothing to build ahead
        assert entry.lora is None and not entry.weights.saved
        return
    layers = kept_lora.layers(entry.model)
    assert entry.lora is not None and len(layers) > 0
    assert not any(layer.merged for layer in layers)
    assert len(entry.weights.saved) == len(layers)  # the loaded weight of every LoRA module
    assert not entry.weights.dirty


def test_a_warm_up_that_fails_leaves_the_message_and_the_model_as_they_were(
    embedded_dir: Path,
) -> None:
    model, _ = base_cache.checkout(str(embedded_dir), device=CPU, dtype=torch.float32,
                                   gradient_checkpointing=False)  # fmt: skip
    rng = torch.random.get_rng_state()
    try:  # peft refuses target modules the model lacks: the train message will say so
        base_cache.warm(model, rank=4, alpha=8.0, target_modules="no_such_module")
        assert not kept_lora.layers(model) and not hasattr(model, "peft_config")
        assert torch.equal(torch.random.get_rng_state(), rng)
    finally:
        base_cache.release()
    (entry,) = base_cache._idle.values()
    assert entry.lora is None and not entry.weights.saved and not entry.loaded_now

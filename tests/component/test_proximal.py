"""FedProx's proximal term on a node (tiny model): its gradient is μ(θ - θ₀) on the shared
LoRA only, it never reaches a reply, and DP-SGD refuses it instead of dropping it unseen."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import ConfigRecord, Context, Message, RecordDict

from client.app import app as client_app
from client.data.synth import synth_partition
from client.model.loading import attach_lora, load_base
from client.model.personal import attach_personal
from client.privacy.dp_sgd import train_dp_sgd
from client.settings import TrainConfig
from client.training import encode, proximal_anchor, proximal_term, train_local
from common.config import SettingsError
from strategies import protocol as p
from strategies.flower.replies import reply_factors

MU, LR = 0.5, 0.01


def _lora(embedded_dir: Path, rank: int = 2) -> tuple[torch.nn.Module, list[list[int]], int]:
    model, tokenizer = load_base(str(embedded_dir), device=torch.device("cpu"))
    peft_model = attach_lora(model, rank=rank, alpha=2.0 * rank, target_modules="all-linear",
                             seed=0)  # fmt: skip
    train, _ = synth_partition(1, n_train=8, n_eval=1)
    rows = encode([r["text"] for r in train], tokenizer, max_length=32)
    return peft_model, rows, tokenizer.pad_token_id


def _grads_and_params(
    model: torch.nn.Module, rows: list[list[int]], pad_id: int, *, mu: float
) -> tuple[list[dict[str, torch.Tensor]], list[dict[str, torch.Tensor]]]:
    """Each step's gradient and the parameters after it, from one run of 2 steps from the same
    start (the model's LoRA is reset to its start first)."""
    lora = {n: q for n, q in model.named_parameters() if q.requires_grad}
    grads: list[dict[str, torch.Tensor]] = []
    params: list[dict[str, torch.Tensor]] = [{n: q.detach().clone() for n, q in lora.items()}]

    def on_step(_: int) -> None:
        grads.append({n: q.grad.detach().clone() for n, q in lora.items() if q.grad is not None})
        params.append({n: q.detach().clone() for n, q in lora.items()})

    config = TrainConfig(local_steps=2, batch_size=4, learning_rate=LR, proximal_mu=mu)
    train_local(model, rows, config, pad_id=pad_id, seed=3, on_step=on_step)
    with torch.no_grad():  # back to the start for the next run
        for n, q in lora.items():
            q.copy_(params[0][n])
    return grads, params


def test_the_proximal_gradient_is_mu_times_the_distance_from_the_start(embedded_dir: Path) -> None:
    model, rows, pad_id = _lora(embedded_dir)
    with torch.no_grad():  # B = 0 would give dL/dA = 0: move B off zero so every factor learns
        for n, q in model.named_parameters():
            if ".lora_B." in n:
                q.normal_(0.0, 0.02, generator=torch.Generator().manual_seed(1))
    plain_g, plain_p = _grads_and_params(model, rows, pad_id, mu=0.0)
    prox_g, prox_p = _grads_and_params(model, rows, pad_id, mu=MU)
    assert set(prox_g[0]) == set(plain_g[0]) and len(prox_g[0]) > 0
    for n, g0 in plain_g[0].items():
        # step 1 starts at θ₀: no proximal pull, the same gradient and the same AdamW step,
        # whose first update is lr·g/(|g| + eps) (bias-corrected m̂ = g, v̂ = g²)
        torch.testing.assert_close(prox_g[0][n], g0, rtol=0, atol=0)
        step = -LR * g0 / (g0.abs() + 1e-8)
        torch.testing.assert_close(prox_p[1][n] - prox_p[0][n], step, rtol=1e-4, atol=1e-9)
        # step 2: the same θ₁ and batch, so the data gradients are equal and the proximal one
        # adds μ(θ₁ - θ₀), by hand from step 1's AdamW update
        torch.testing.assert_close(prox_g[1][n] - plain_g[1][n], MU * step, rtol=1e-4, atol=1e-7)
    # and the pull shows: step 2 moves the parameters less far from the start than without it
    far = {n: float((prox_p[2][n] - prox_p[0][n]).norm()) for n in prox_p[0]}
    assert sum(far.values()) < sum(float((plain_p[2][n] - plain_p[0][n]).norm()) for n in far)


def test_the_proximal_term_is_half_mu_times_the_squared_distance() -> None:
    a = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
    b = torch.nn.Parameter(torch.tensor([[0.5]]))
    anchor = [(a, torch.tensor([0.0, 0.0])), (b, torch.tensor([[1.5]]))]
    term = proximal_term(anchor, mu=0.2)
    assert float(term.detach()) == pytest.approx(0.5 * 0.2 * (1.0 + 4.0 + 1.0))
    term.backward()  # type: ignore[no-untyped-call]
    assert a.grad is not None and b.grad is not None
    torch.testing.assert_close(a.grad, torch.tensor([0.2, 0.4]))
    torch.testing.assert_close(b.grad, torch.tensor([[-0.2]]))
    assert float(proximal_term([], mu=1.0)) == 0.0


def test_the_private_lora_and_frozen_factors_are_not_anchored(
    embedded_dir: Path, tmp_path: Path
) -> None:
    model, _, _ = _lora(embedded_dir)
    attach_personal(model, tmp_path, seed=1, freeze_a=True)  # type: ignore[arg-type]
    anchored = {id(q) for q, _ in proximal_anchor(model)}
    names = {n for n, q in model.named_parameters() if id(q) in anchored}
    trainable = {n for n, q in model.named_parameters() if q.requires_grad}
    assert names and all(".lora_B.default." in n for n in names)  # A frozen, private not anchored
    assert {n for n in trainable if ".personal." in n} and names < trainable


def _train_message(mu: float) -> Message:
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 1
    config = TrainConfig(local_steps=2, batch_size=4, max_length=48, server_round=1,
                         proximal_mu=mu)  # fmt: skip
    instruction = ConfigRecord({**config.to_config(), p.NODE_MODE: p.CONTINUE_MERGED})
    content = RecordDict({p.ARRAYS: p.to_record({}), p.CONFIG: instruction})
    msg = Message(content, dst_node_id=7, message_type="train", group_id="1")
    msg.metadata.__dict__["_message_id"] = "m1"
    return msg


def _context(embedded_dir: Path, **run: object) -> Context:
    run_config = {"base-model": str(embedded_dir), "synth-train-examples": 16,
                  "synth-eval-examples": 4, **run}  # fmt: skip
    return Context(run_id=1, node_id=7, node_config={"partition-id": 1, "lora-rank": 4},
                   state=RecordDict(), run_config=run_config)  # fmt: skip


def test_a_node_trains_with_the_proximal_term_and_sends_only_its_factors(
    embedded_dir: Path,
) -> None:
    plain = client_app(_train_message(0.0), _context(embedded_dir))
    prox = client_app(_train_message(1.0), _context(embedded_dir))
    assert not plain.has_error() and not prox.has_error(), prox.error.reason
    assert set(prox.content.keys()) == set(plain.content.keys())
    assert set(prox.content.keys()) == {p.ARRAYS, p.METRICS, p.ADAPTER, p.PRIVACY}
    sent, without = reply_factors(prox.content), reply_factors(plain.content)
    assert set(sent) == set(without)  # the same factors, no anchor or other state
    assert any(not np.array_equal(sent[k], without[k]) for k in sent)  # μ changed the training


def test_dp_sgd_refuses_the_proximal_term(embedded_dir: Path) -> None:
    model, rows, pad_id = _lora(embedded_dir)
    with pytest.raises(SettingsError, match=r"`proximal-mu` is 0\.1 with privacy dp-sgd"):
        train_dp_sgd(model, rows, TrainConfig(local_steps=1, batch_size=2, proximal_mu=0.1),
                     noise_multiplier=1.0, clip_norm=1.0, sample_rate=0.5, pad_id=pad_id,
                     seed=0)  # fmt: skip

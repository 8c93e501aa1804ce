"""A node's private round on the embedded model: DP-SGD really trains, DP-LoRA releases a public
A and a noised B, the ledger carries over a restart, the budget guard declines before training."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import ConfigRecord, Context, Message, RecordDict

from client.app import ERROR_PRIVACY
from client.app import app as client_app
from client.data.synth import synth_partition
from client.model.loading import attach_lora, load_base, pick_device
from client.privacy.dp_sgd import sequence_losses, train_dp_sgd
from client.privacy.ledger import LEDGER_FILE, epsilon_of
from client.settings import TrainConfig
from client.training import collate, encode
from strategies import protocol as p
from strategies.math.factors import A_SUFFIX, B_SUFFIX

STEPS, BATCH, EXAMPLES = 3, 4, 16


def _rows(embedded_dir: Path, n: int = EXAMPLES) -> tuple[list[list[int]], int]:
    _, tokenizer = load_base(str(embedded_dir), device=torch.device("cpu"))
    train, _ = synth_partition(1, n_train=n, n_eval=1)
    return encode([r["text"] for r in train], tokenizer, max_length=48), tokenizer.pad_token_id


def test_dp_sgd_moves_every_lora_weight_at_every_step(embedded_dir: Path) -> None:
    device = pick_device("auto")
    model, _ = load_base(str(embedded_dir), device=device)  # on its device before peft
    peft_model = attach_lora(model, rank=4, alpha=8, target_modules="all-linear", seed=0)
    lora = {n: q for n, q in peft_model.named_parameters() if q.requires_grad}
    assert lora and all(".lora_" in n for n in lora)
    assert {q.device for q in peft_model.parameters()} == {lora[next(iter(lora))].device}
    rows, pad_id = _rows(embedded_dir)
    before = {n: q.detach().clone() for n, q in lora.items()}
    moved: list[bool] = []

    def on_step(_: int) -> None:
        moved.append(all(not torch.equal(before[n], q) for n, q in lora.items()))
        before.update({n: q.detach().clone() for n, q in lora.items()})

    result = train_dp_sgd(peft_model, rows, TrainConfig(local_steps=4, batch_size=BATCH),
                          noise_multiplier=1.0, clip_norm=1.0, sample_rate=BATCH / len(rows),
                          pad_id=pad_id, seed=0, on_step=on_step)  # fmt: skip
    assert moved == [True] * 4 and result.steps == 4
    assert not any(hasattr(q, "grad_sample") and q.grad_sample is not None for q in lora.values())


def test_empty_poisson_batches_still_take_a_noised_step(embedded_dir: Path) -> None:
    model, _ = load_base(str(embedded_dir), device=torch.device("cpu"))
    peft_model = attach_lora(model, rank=2, alpha=4, target_modules="all-linear", seed=0)
    rows, pad_id = _rows(embedded_dir, n=2)
    b = next(q for n, q in peft_model.named_parameters() if ".lora_B." in n)
    result = train_dp_sgd(peft_model, rows, TrainConfig(local_steps=3, batch_size=1),
                          noise_multiplier=1.0, clip_norm=1.0, sample_rate=1e-9, pad_id=pad_id,
                          seed=0)  # fmt: skip
    assert result.steps == 3 and np.isnan(result.loss_first)  # no record was sampled
    assert b.abs().sum() > 0  # B started at zero: the noise moved it


def test_per_sequence_losses_do_not_depend_on_the_other_rows(embedded_dir: Path) -> None:
    model, _ = load_base(str(embedded_dir), device=torch.device("cpu"))
    rows, pad_id = _rows(embedded_dir, n=3)
    with torch.no_grad():
        together = sequence_losses(model, collate(rows, pad_id=pad_id, device=torch.device("cpu")))
        alone = [sequence_losses(model, collate([r], pad_id=pad_id, device=torch.device("cpu")))
                 for r in rows]  # fmt: skip
    torch.testing.assert_close(together, torch.cat(alone), rtol=1e-4, atol=1e-4)


def _train(
    embedded_dir: Path,
    state: Path,
    server_round: int,
    run_privacy: dict[str, object] | None = None,
    **node: object,
) -> Message:
    """One train instruction to a fresh Context, as a restarted node process would see it."""
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 1
    config = TrainConfig(local_steps=STEPS, batch_size=BATCH, max_length=48,
                         server_round=server_round)  # fmt: skip
    content = RecordDict({p.ARRAYS: p.to_record({}), p.CONFIG: ConfigRecord(config.to_config())})
    msg = Message(content, dst_node_id=7, message_type="train", group_id=str(server_round))
    msg.metadata.__dict__["_message_id"] = f"m{server_round}"
    run = {"base-model": str(embedded_dir), "synth-train-examples": EXAMPLES,
           "synth-eval-examples": 4, "num-server-rounds": 2,
           **(run_privacy or {"privacy": "dp-sgd", "dp-noise-multiplier": 1.0})}  # fmt: skip
    node_config = {"partition-id": 1, "lora-rank": 4, "num-threads": 1, "state-dir": str(state),
                   **node}  # fmt: skip
    context = Context(run_id=1, node_id=7, node_config=node_config, state=RecordDict(),
                      run_config=run)  # fmt: skip
    return client_app(msg, context)


def test_dp_sgd_epsilon_continues_across_a_restart_and_equals_opacus(
    embedded_dir: Path, tmp_path: Path
) -> None:
    first = _train(embedded_dir, tmp_path, 1)
    second = _train(embedded_dir, tmp_path, 2)
    assert not first.has_error() and not second.has_error()
    metrics = second.content.metric_records[p.METRICS]
    q = BATCH / EXAMPLES
    assert metrics[p.DP_STEPS] == 2 * STEPS and metrics[p.DP_SAMPLE_RATE] == q
    expected = epsilon_of([(1.0, q, 2 * STEPS)], delta=1e-5)
    assert metrics[p.DP_EPSILON] == pytest.approx(expected, abs=1e-3)
    assert metrics[p.DP_EPSILON] > first.content.metric_records[p.METRICS][p.DP_EPSILON]
    assert second.content.config_records[p.PRIVACY][p.DP_MODE] == "dp-sgd"
    ledger = json.loads((tmp_path / LEDGER_FILE).read_text())
    assert [r["server_round"] for r in ledger["releases"]] == [1, 2]


def test_budget_guard_declines_before_training_and_writes_nothing(
    embedded_dir: Path, tmp_path: Path
) -> None:
    reply = _train(embedded_dir, tmp_path, 1, **{"dp-max-epsilon": 0.5})
    assert reply.has_error() and reply.error.code == ERROR_PRIVACY
    assert "privacy budget" in reply.error.reason and "`dp-max-epsilon` = 0.5" in reply.error.reason
    assert not (tmp_path / LEDGER_FILE).exists()


def test_a_damaged_ledger_is_an_error_reply_and_stays_as_it_was(
    embedded_dir: Path, tmp_path: Path
) -> None:
    (tmp_path / LEDGER_FILE).write_text("{broken")
    reply = _train(embedded_dir, tmp_path, 1)
    assert reply.has_error() and reply.error.code == ERROR_PRIVACY
    assert LEDGER_FILE in reply.error.reason and "never resets" in reply.error.reason
    assert (tmp_path / LEDGER_FILE).read_text() == "{broken"


def test_a_weaker_node_setting_is_an_error_reply(embedded_dir: Path, tmp_path: Path) -> None:
    reply = _train(embedded_dir, tmp_path, 1, **{"dp-noise-multiplier": 0.1})
    assert reply.has_error() and "`dp-noise-multiplier` is 0.1" in reply.error.reason


def test_dp_lora_releases_the_public_a_and_a_clipped_noised_b(
    embedded_dir: Path, tmp_path: Path
) -> None:
    dp_lora = {"privacy": "dp-lora", "dp-noise-multiplier": 0.5, "dp-clip-norm": 0.1}
    replies = [
        _train(embedded_dir, tmp_path / name, 1, dp_lora, **{"partition-id": pid})
        for pid, name in ((0, "a"), (2, "b"))
    ]
    arrays = [p.from_record(r.content.array_records[p.ARRAYS]) for r in replies]
    a_keys = [k for k in arrays[0] if k.endswith(A_SUFFIX)]
    for key in a_keys:  # the same data-independent A at both nodes: it carries nothing private
        np.testing.assert_array_equal(arrays[0][key], arrays[1][key])
    b = np.concatenate([v.ravel() for k, v in arrays[0].items() if k.endswith(B_SUFFIX)])
    assert b.std() == pytest.approx(0.5 * 2 * 0.1, rel=0.1)  # noise σ·2C dominates ‖B‖ <= C
    metrics = replies[0].content.metric_records[p.METRICS]
    assert metrics[p.DP_SAMPLE_RATE] == 1.0 and metrics[p.DP_STEPS] == 1
    assert metrics[p.DP_EPSILON] == pytest.approx(epsilon_of([(0.5, 1.0, 1)], delta=1e-5))


@pytest.mark.gpu
def test_dp_sgd_on_cuda_trains_the_lora_weights_in_place(embedded_dir: Path) -> None:
    device = pick_device("auto")
    model, _ = load_base(str(embedded_dir), device=device)
    peft_model = attach_lora(model, rank=4, alpha=8, target_modules="all-linear", seed=0)
    lora = {n: q for n, q in peft_model.named_parameters() if q.requires_grad}
    assert all(q.device.type == "cuda" for q in peft_model.parameters())
    rows, pad_id = _rows(embedded_dir)
    before = {n: q.detach().clone() for n, q in lora.items()}
    train_dp_sgd(peft_model, rows, TrainConfig(local_steps=2, batch_size=BATCH),
                 noise_multiplier=1.0, clip_norm=1.0, sample_rate=BATCH / len(rows),
                 pad_id=pad_id, seed=0)  # fmt: skip
    assert all(not torch.equal(before[n], q) for n, q in lora.items())

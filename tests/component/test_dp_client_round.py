"""A node's private round on the embedded model: DP-SGD really trains (also with activation
checkpointing), DP-LoRA releases a public A and a noised B, the ledger carries over a restart and
a crash, the budget guard declines before training, and a reply carries exactly the table's keys."""

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
from client.privacy.ledger import LEDGER_FILE, Ledger, epsilon_of, load_ledger
from client.privacy.releases import reply_keys
from client.privacy.round import COUNT_NOISE_MULTIPLIER
from client.settings import TrainConfig
from client.training import collate, encode
from strategies import protocol as p
from strategies.flower.replies import reply_factors
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
    *,
    steps: int = STEPS,
    batch: int = BATCH,
    **node: object,
) -> Message:
    """One train instruction to a fresh Context, as a restarted node process would see it."""
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 1
    config = TrainConfig(local_steps=steps, batch_size=batch, max_length=48,
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
    ledger = json.loads((tmp_path / LEDGER_FILE).read_text())
    noised = ledger["noised_count"]  # ñ: drawn once, reused, the only size that leaves
    q = min(1.0, BATCH / noised)
    assert (
        metrics[p.NUM_EXAMPLES] == noised == first.content.metric_records[p.METRICS][p.NUM_EXAMPLES]
    )
    assert metrics[p.DP_STEPS] == 2 * STEPS and metrics[p.DP_SAMPLE_RATE] == q
    expected = epsilon_of([(COUNT_NOISE_MULTIPLIER, 1.0, 1), (1.0, q, 2 * STEPS)], delta=1e-5)
    assert metrics[p.DP_EPSILON_RECORD] == pytest.approx(expected, abs=1e-3)
    assert (
        metrics[p.DP_EPSILON_RECORD] > first.content.metric_records[p.METRICS][p.DP_EPSILON_RECORD]
    )
    assert second.content.config_records[p.PRIVACY][p.DP_MODE] == "dp-sgd"
    assert [r["server_round"] for r in ledger["releases"]] == [0, 1, 2]
    assert [r["status"] for r in ledger["releases"]] == ["confirmed"] * 3


def test_budget_guard_declines_before_training_and_writes_nothing(
    embedded_dir: Path, tmp_path: Path
) -> None:
    reply = _train(embedded_dir, tmp_path, 1, **{"dp-max-epsilon": 0.5})
    assert reply.has_error() and reply.error.code == ERROR_PRIVACY
    assert "privacy budget" in reply.error.reason and "`dp-max-epsilon` = 0.5" in reply.error.reason
    ledger = json.loads((tmp_path / LEDGER_FILE).read_text())  # only ñ, which the decline used
    assert [r["mode"] for r in ledger["releases"]] == ["count"]


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
    arrays = [reply_factors(r.content) for r in replies]
    a_keys = [k for k in arrays[0] if k.endswith(A_SUFFIX)]
    for key in a_keys:  # the same data-independent A at both nodes: it carries nothing private
        np.testing.assert_array_equal(arrays[0][key], arrays[1][key])
    b = np.concatenate([v.ravel() for k, v in arrays[0].items() if k.endswith(B_SUFFIX)])
    assert b.std() == pytest.approx(0.5 * 2 * 0.1, rel=0.1)  # noise σ·2C dominates ‖B‖ <= C
    metrics = replies[0].content.metric_records[p.METRICS]
    assert metrics[p.DP_SAMPLE_RATE] == 1.0 and metrics[p.DP_STEPS] == 1
    one = epsilon_of([(0.5, 1.0, 1)], delta=1e-5)
    assert metrics[p.DP_EPSILON_RECORD] == pytest.approx(one)
    assert metrics[p.DP_EPSILON_INSTITUTION] == pytest.approx(one)
    assert metrics[p.NUM_EXAMPLES] == BATCH * STEPS  # public: the size stays on the node


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


@pytest.mark.parametrize("mode", ["none", "dp-sgd", "dp-lora"])
def test_a_reply_carries_exactly_the_keys_of_the_releases_table(
    embedded_dir: Path, tmp_path: Path, mode: str
) -> None:
    run = {"privacy": mode, "dp-noise-multiplier": 0.0 if mode == "none" else 1.0}
    reply = _train(embedded_dir, tmp_path, 1, run, steps=1)
    content = reply.content
    assert set(content.config_records) | set(content.metric_records) | set(
        content.array_records
    ) == {p.METRICS, p.ADAPTER, p.PRIVACY, p.ARRAYS}
    # optional keys, absent here: dp-sgd's data set has no per-institution guarantee (ñ is
    # per record); one dp-lora release has no history to tell (σ and q never changed)
    absent = {"none": set(), "dp-sgd": {p.DP_EPSILON_INSTITUTION}, "dp-lora": {p.DP_HISTORY}}
    for record in (p.ADAPTER, p.PRIVACY):
        sent = reply_keys(mode, record) - absent[mode] - {p.MODULES_DIGEST}  # no digest sent
        assert set(content.config_records[record]) == sent
    assert set(content.metric_records[p.METRICS]) == reply_keys(mode, p.METRICS) - absent[mode]
    arrays = reply_factors(content)
    assert arrays and all(k.endswith((A_SUFFIX, B_SUFFIX)) for k in arrays)


def test_full_batch_one_step_replies_share_no_value_computed_from_the_records(
    embedded_dir: Path, tmp_path: Path
) -> None:
    """q = 1 and one step: without DP noise the first loss and the factors would repeat."""
    runs = [_train(embedded_dir, tmp_path / run, 1, {"privacy": "dp-sgd",
                   "dp-noise-multiplier": 10.0}, steps=1, batch=1000)
            for run in ("a", "b")]  # fmt: skip
    metrics = [dict(r.content.metric_records[p.METRICS]) for r in runs]
    assert metrics[0][p.DP_SAMPLE_RATE] == 1.0 == metrics[1][p.DP_SAMPLE_RATE]
    public = {p.DP_DELTA, p.DP_NOISE_MULTIPLIER, p.DP_SAMPLE_RATE, p.DP_STEPS}
    noised_accounted = {p.NUM_EXAMPLES, p.DP_EPSILON_RECORD}  # ñ, and ε as a function of it
    equal = {k for k in metrics[0] if metrics[0][k] == metrics[1].get(k)}
    assert equal <= public | noised_accounted
    arrays = [reply_factors(r.content) for r in runs]
    for key in arrays[0]:  # the same start (seeded A, zero B): each factor carries fresh noise
        # (entries may repeat: AdamW's first step is ±lr, the sign of the noised gradient)
        assert not np.array_equal(arrays[0][key], arrays[1][key]), key


def test_a_crash_after_training_before_the_reply_keeps_the_release_counted(
    embedded_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import client.app

    def crash(plan: object) -> None:
        raise RuntimeError("the node process died here")

    with monkeypatch.context() as patch:
        patch.setattr(client.app, "commit", crash)
        with pytest.raises(RuntimeError, match="died"):
            _train(embedded_dir, tmp_path, 1)
    ledger = _on_disk(tmp_path)
    assert [(r.mode, r.status) for r in ledger.releases] == [("count", "confirmed"),
                                                             ("dp-sgd", "planned")]  # fmt: skip
    reply = _train(embedded_dir, tmp_path, 2)  # the restarted node counts it
    q = min(1.0, BATCH / (ledger.noised_count or 1))
    expected = epsilon_of([(COUNT_NOISE_MULTIPLIER, 1.0, 1), (1.0, q, 2 * STEPS)], delta=1e-5)
    assert reply.content.metric_records[p.METRICS][p.DP_EPSILON_RECORD] == pytest.approx(
        expected, abs=1e-3
    )


def _on_disk(state: Path) -> Ledger:
    fingerprint = json.loads((state / LEDGER_FILE).read_text())["fingerprint"]
    return load_ledger(state, fingerprint=fingerprint, delta=1e-5)


def test_dp_sgd_then_dp_lora_on_one_data_set_reports_two_guarantees_apart(
    embedded_dir: Path, tmp_path: Path
) -> None:
    from server.run.privacy_summary import epsilon_column
    from strategies.flower.privacy_report import read_privacy

    sgd = _train(embedded_dir, tmp_path, 1)
    lora = _train(embedded_dir, tmp_path, 2, {"privacy": "dp-lora", "dp-noise-multiplier": 2.0})
    assert not sgd.has_error() and not lora.has_error()
    ledger = _on_disk(tmp_path)
    q = min(1.0, BATCH / (ledger.noised_count or 1))
    every = [(COUNT_NOISE_MULTIPLIER, 1.0, 1), (1.0, q, STEPS), (2.0, 1.0, 1)]
    metrics = lora.content.metric_records[p.METRICS]
    assert metrics[p.DP_EPSILON_RECORD] == pytest.approx(epsilon_of(every, delta=1e-5), abs=1e-3)
    assert p.DP_EPSILON_INSTITUTION not in metrics  # dp-sgd left no per-institution guarantee
    fields = read_privacy(lora)
    column = epsilon_column([{"round": 2, "nodes": {"n": fields}}])
    assert (
        column["n"] == f"{metrics[p.DP_EPSILON_RECORD]:.3f} per record, — per institution (δ=1e-05)"
    )
    fresh = _train(embedded_dir, tmp_path / "lora-only", 1, {"privacy": "dp-lora",
                   "dp-noise-multiplier": 2.0})  # fmt: skip
    both = read_privacy(fresh)
    assert both["dp_epsilon_record"] == both["dp_epsilon_institution"] > 0


def _dp_sgd_weights(embedded_dir: Path, *, checkpointing: bool) -> dict[str, torch.Tensor]:
    from client.model.cache import _set_checkpointing

    model, _ = load_base(str(embedded_dir), device=torch.device("cpu"))
    if checkpointing:
        _set_checkpointing(model, enabled=True)  # as the node does (use_reentrant=False)
    assert model.is_gradient_checkpointing == checkpointing
    peft_model = attach_lora(model, rank=4, alpha=8, target_modules="all-linear", seed=0)
    rows, pad_id = _rows(embedded_dir)
    before = {n: q.detach().clone() for n, q in peft_model.named_parameters() if q.requires_grad}
    train_dp_sgd(peft_model, rows, TrainConfig(local_steps=2, batch_size=BATCH),
                 noise_multiplier=1.0, clip_norm=1.0, sample_rate=BATCH / len(rows),
                 pad_id=pad_id, seed=3)  # fmt: skip
    after = {n: q.detach().clone() for n, q in peft_model.named_parameters() if n in before}
    assert all(not torch.equal(before[n], after[n]) for n in before)  # every LoRA weight moved
    return after


def test_dp_sgd_with_gradient_checkpointing_trains_a_tiny_llama_as_without(
    embedded_dir: Path,
) -> None:
    """It failed on the first step ("Per sample gradient is not initialized"); now the same
    noise and sampling give the same weights with and without checkpointing."""
    plain = _dp_sgd_weights(embedded_dir, checkpointing=False)
    checkpointed = _dp_sgd_weights(embedded_dir, checkpointing=True)
    for name, weight in plain.items():
        torch.testing.assert_close(checkpointed[name], weight, rtol=1e-4, atol=1e-5)


def test_a_node_with_gradient_checkpointing_answers_a_dp_sgd_round(
    embedded_dir: Path, tmp_path: Path
) -> None:
    reply = _train(embedded_dir, tmp_path, 1, **{"gradient-checkpointing": True})
    assert not reply.has_error(), reply.error.reason if reply.has_error() else ""
    assert reply.content.metric_records[p.METRICS][p.DP_STEPS] == STEPS

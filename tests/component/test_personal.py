"""Personalization on a real node (tiny model): the private LoRA stays in the node's state
folder, survives a restart, never leaves the node, and the node is evaluated with it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from flwr.app import ConfigRecord, Context, Message, RecordDict
from safetensors.numpy import load_file

from client.app import app as client_app
from client.model import cache as base_cache
from client.model.personal import PERSONAL_FILE
from client.privacy.ledger import LEDGER_FILE
from client.settings import TrainConfig
from strategies import protocol as p
from strategies.flower.replies import reply_factors


def _message(kind: str, server_round: int, *, mode: str = p.MERGE) -> Message:
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 1
    config = TrainConfig(local_steps=3, batch_size=4, max_length=48, server_round=server_round)
    instruction = ConfigRecord({**config.to_config(), p.NODE_MODE: mode})
    content = RecordDict({p.ARRAYS: p.to_record({}), p.CONFIG: instruction})
    msg = Message(content, dst_node_id=7, message_type=kind, group_id=str(server_round))
    msg.metadata.__dict__["_message_id"] = f"m{server_round}{kind}"
    return msg


def _context(base: Path, state: Path, **node: object) -> Context:
    """A fresh Context, as a restarted node has: nothing but its node config and its folder."""
    run = {"base-model": str(base), "synth-train-examples": 16, "synth-eval-examples": 8}
    node_config = {"partition-id": 1, "lora-rank": 4, "num-threads": 1, "state-dir": str(state),
                   "personal": "private-lora", **node}  # fmt: skip
    return Context(run_id=1, node_id=7, node_config=node_config, state=RecordDict(), run_config=run)


def _eval_loss(base: Path, state: Path, **node: object) -> float:
    reply = client_app(_message("evaluate", 1), _context(base, state, **node))
    assert not reply.has_error(), reply.error.reason
    return float(reply.content.metric_records[p.METRICS][p.EVAL_LOSS])


@pytest.mark.parametrize("mode", [p.MERGE, p.CONTINUE_MERGED])
def test_private_lora_survives_a_restart_and_never_leaves(
    embedded_dir: Path, tmp_path: Path, mode: str
) -> None:
    state = tmp_path / "state"
    base_eval = _eval_loss(embedded_dir, state)  # no private LoRA yet: the global model
    first = client_app(_message("train", 1, mode=mode), _context(embedded_dir, state))
    assert not first.has_error(), first.error.reason
    saved = load_file(str(state / PERSONAL_FILE))
    sent = reply_factors(first.content)
    # the reply holds the shared LoRA only: no key of the private adapter, nothing else
    assert set(first.content.keys()) == {p.ARRAYS, p.METRICS, p.ADAPTER, p.PRIVACY}
    assert not any("personal" in key for key in sent) and set(sent) == set(saved)
    assert all(not np.array_equal(sent[k], saved[k]) for k in sent if "lora_B" in k)
    assert any(np.abs(v).sum() > 0 for k, v in saved.items() if "lora_B" in k)  # it trained

    base_cache.release()
    base_cache._idle.clear()  # the restart: no process state survives, only the state folder
    second = client_app(_message("train", 2, mode=mode), _context(embedded_dir, state))
    assert not second.has_error(), second.error.reason
    after = load_file(str(state / PERSONAL_FILE))
    moved = sum(float(np.abs(after[k] - saved[k]).sum()) for k in saved)
    assert moved > 0  # round 2 continued training the private LoRA it loaded ...
    fresh = tmp_path / "fresh"
    client_app(_message("train", 2, mode=mode), _context(embedded_dir, fresh))
    restarted = load_file(str(fresh / PERSONAL_FILE))
    # ... not a new one: a node without the saved state ends round 2 elsewhere
    assert sum(float(np.abs(after[k] - restarted[k]).sum()) for k in after) > 0
    personalized = _eval_loss(embedded_dir, state)
    assert personalized < base_eval  # evaluated with its private LoRA
    assert _eval_loss(embedded_dir, state, personal="none") == pytest.approx(base_eval)


def test_a_private_lora_of_another_rank_is_refused_naming_the_fix(
    embedded_dir: Path, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    client_app(_message("train", 1), _context(embedded_dir, state))
    reply = client_app(_message("train", 2), _context(embedded_dir, state, **{"lora-rank": 2}))
    assert reply.has_error() and "`lora-rank` or base model changed" in reply.error.reason


def test_an_unknown_personal_mode_is_refused(embedded_dir: Path, tmp_path: Path) -> None:
    reply = client_app(_message("train", 1), _context(embedded_dir, tmp_path, personal="both"))
    assert reply.has_error() and "`personal` is 'both'" in reply.error.reason


@pytest.mark.parametrize("privacy", ["dp-sgd", "dp-lora"])
def test_personalization_under_dp_releases_only_the_shared_part(
    embedded_dir: Path, tmp_path: Path, privacy: str
) -> None:
    state = tmp_path / "state"
    context = _context(embedded_dir, state)
    context.run_config.update({"privacy": privacy, "dp-noise-multiplier": 1.0})
    reply = client_app(_message("train", 1), context)
    assert not reply.has_error(), reply.error.reason
    assert reply.content.config_records[p.PRIVACY][p.DP_MODE] == privacy
    sent = reply_factors(reply.content)
    saved = load_file(str(state / PERSONAL_FILE))
    assert not any("personal" in key for key in sent) and set(sent) == set(saved)
    assert any(np.abs(v).sum() > 0 for k, v in saved.items() if "lora_B" in k)
    assert (state / LEDGER_FILE).is_file()  # the private LoRA sits beside the ledger

"""A real node's train reply on the embedded model, as Flower serialises it: its bytes stay within
2 % of the factors' own bytes, and the server parses it back exactly (issue 14, lean replies)."""

from __future__ import annotations

from pathlib import Path

import pytest
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects
from flwr.supercore.inflatable.inflatable_utils import inflate_object_from_contents
from flwr.supercore.task_identity import TaskIdentity

from client.app import app as client_app
from client.settings import TrainConfig
from server.run.modules import announced_modules
from strategies import protocol as p
from strategies.flower.replies import ClientUpdate, Expectation, parse_train_reply, reply_factors
from strategies.math.packing import module_digest


def _train(base: Path, rank: int, digest: str | None) -> Message:
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 1
    config = TrainConfig(local_steps=1, batch_size=2, max_length=32, server_round=1).to_config()
    if digest is not None:
        config = {**config, p.MODULES_DIGEST: digest}
    content = RecordDict({p.ARRAYS: p.to_record({}), p.CONFIG: ConfigRecord(config)})
    msg = Message(content, dst_node_id=7, message_type="train", group_id="1")
    msg.metadata.__dict__["_message_id"] = "m1"
    run = {"base-model": str(base), "synth-train-examples": 4, "synth-eval-examples": 2}
    node = {"partition-id": 0, "lora-rank": rank, "lora-alpha": 2.0 * rank, "num-threads": 1}
    context = Context(run_id=1, node_id=7, node_config=node, state=RecordDict(), run_config=run)
    reply = client_app(msg, context)
    assert not reply.has_error(), reply.error.reason
    return reply


def _over_the_wire(msg: Message) -> tuple[Message, int]:
    contents = {oid: obj.deflate() for oid, obj in get_all_nested_objects(msg).items()}
    nbytes = sum(len(c) for c in contents.values())
    back = inflate_object_from_contents(msg.object_id, contents)
    assert isinstance(back, Message)
    return back, nbytes


@pytest.mark.parametrize("rank", [4, 16])
def test_a_real_reply_costs_at_most_2_percent_over_its_factor_bytes(
    embedded_dir: Path, rank: int
) -> None:
    """Rank 4 is the worst case: before the flat layout it cost 1.19 x."""
    modules = announced_modules(str(embedded_dir), "all-linear")
    reply = _train(embedded_dir, rank, module_digest(modules))
    assert p.MODULES_DIGEST in reply.content.config_records[p.ADAPTER]  # the names stay home
    factors = reply_factors(reply.content, modules)
    raw = sum(v.size * 4 for v in factors.values())
    back, nbytes = _over_the_wire(reply)
    assert nbytes / raw <= 1.02, f"uplink {nbytes} B over raw {raw} B = {nbytes / raw:.4f}"
    update = parse_train_reply(back, Expectation(modules=modules))
    assert isinstance(update, ClientUpdate), update
    assert update.rank == rank and set(update.factors) == set(modules)
    for module, (a, b, _) in update.factors.items():
        assert (a == factors[f"{module}.lora_A.weight"]).all()
        assert (b == factors[f"{module}.lora_B.weight"]).all()


def test_a_node_whose_modules_the_digest_does_not_name_sends_their_names(
    embedded_dir: Path,
) -> None:
    reply = _train(embedded_dir, 2, "0" * 32)
    adapter = reply.content.config_records[p.ADAPTER]
    assert p.MODULES_DIGEST not in adapter
    modules = announced_modules(str(embedded_dir), "all-linear")
    assert adapter[p.MODULES] == sorted(modules)

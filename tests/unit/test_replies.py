"""Reply validation: every way a node's reply can be wrong becomes a reason, not a crash."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import ConfigRecord, Error, Message, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from strategies import protocol as p
from strategies.flower.replies import (
    ClientUpdate,
    Expectation,
    Rejected,
    parse_train_replies,
    parse_train_reply,
)
from tests.wire import hostile_factors

TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 1


def _instruction(node: int) -> Message:
    msg = Message(RecordDict(), dst_node_id=node, message_type="train", group_id="1")
    msg.metadata.__dict__["_message_id"] = f"m{node}"
    return msg


def _reply(node: int, arrays: dict[str, np.ndarray], *, rank: int = 2, alpha: float = 4.0,
           n: float = 10) -> Message:  # fmt: skip
    record, layout = hostile_factors(arrays)
    content = RecordDict({
        p.ARRAYS: record,
        p.METRICS: MetricRecord({p.NUM_EXAMPLES: n, p.TRAIN_LOSS: 1.5}),
        p.ADAPTER: ConfigRecord({p.RANK: rank, p.ALPHA: alpha, p.NODE_NAME: f"bank-{node}",
                                 **layout}),  # type: ignore[dict-item]
    })  # fmt: skip
    return Message(content, reply_to=_instruction(node))


def _factors(r: int = 2, in_dim: int = 5, out_dim: int = 3, module: str = "m") -> dict:
    return {
        f"{module}.lora_A.weight": np.ones((r, in_dim)),
        f"{module}.lora_B.weight": np.ones((out_dim, r)),
    }


def test_a_good_reply_becomes_an_update_with_its_scaling() -> None:
    update = parse_train_reply(_reply(5, _factors()))
    assert isinstance(update, ClientUpdate)
    a, b, scaling = update.factors["m"]
    assert a.shape == (2, 5) and b.shape == (3, 2) and scaling == 2.0
    assert update.num_examples == 10 and update.name == "bank-5" and update.bytes_up > 0


@pytest.mark.parametrize(
    ("arrays", "kwargs", "reason"),
    [
        ({"m.lora_A.weight": np.ones((3, 2)), "m.lora_B.weight": np.ones((2, 5))}, {}, "layout"),
        ({"m.lora_A.weight": np.ones((3, 5)), "m.lora_B.weight": np.ones((3, 3))}, {}, "need A"),
        (_factors(), {"rank": 4}, "need A (4, 5) and B (3, 4)"),
        (_factors(), {"n": 0}, "num-examples"),
        (_factors(), {"n": 2.5}, "num-examples"),
        (_factors(), {"alpha": -1.0}, "alpha"),
        (
            {"m.lora_A.weight": np.full((2, 5), np.nan), "m.lora_B.weight": np.ones((3, 2))},
            {},
            "NaN",
        ),
    ],
)
def test_bad_replies_are_rejected_with_a_reason(arrays, kwargs, reason) -> None:
    result = parse_train_reply(_reply(5, arrays, **kwargs))
    assert isinstance(result, Rejected)
    assert reason in result.reason


def test_an_error_reply_keeps_the_nodes_reason() -> None:
    msg = Message(Error(code=400, reason="`max-epsilon` reached"), reply_to=_instruction(9))
    result = parse_train_reply(msg)
    assert isinstance(result, Rejected) and "`max-epsilon` reached" in result.reason


def test_the_majority_shape_wins_and_the_odd_node_is_named() -> None:
    replies = [
        _reply(1, _factors()),
        _reply(2, _factors(r=3), rank=3),
        _reply(3, _factors(in_dim=6)),
    ]
    parsed = parse_train_replies(replies)
    assert [u.node_id for u in parsed.updates] == [1, 2]
    assert [r.node_id for r in parsed.rejected] == [3]


def test_replies_must_match_the_global_adapter_shapes() -> None:
    parsed = parse_train_replies([_reply(1, _factors())], Expectation(modules={"m": (3, 6)}))
    assert not parsed.updates and "need A (2, 6)" in parsed.rejected[0].reason

"""A reply's config records together hold at most ``MAX_CONFIG_BYTES`` (256 KiB), checked before
anything in them is read: at the cap a reply is used, one byte over it is refused with the
record, the size and the cap; the largest legitimate layouts (a 70B model's module names in
full) fit with room to spare."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import ConfigRecord, Message, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from strategies import protocol as p
from strategies.flower import replies
from strategies.flower.replies import ClientUpdate, Rejected, parse_eval_reply, parse_train_reply
from strategies.math import packing
from tests.unit.test_reply_screening import NODES, _factors, _reply, _round

TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 1
CAP = p.MAX_CONFIG_BYTES
ATTN = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj")
MLP = ("mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")


def _llama_modules(layers: int, prefix: str = "base_model.model.model.layers") -> list[str]:
    """peft's module names of a Llama with LoRA on all seven projections of every layer."""
    return [f"{prefix}.{i}.{m}" for i in range(layers) for m in (*ATTN, *MLP)]


def _message(modules: list[str], *, privacy: dict | None = None, **extra: object) -> Message:
    """A rank-1 train reply for ``modules`` (1 x 1 factors) with the names sent in full."""
    factors = {}
    for k, module in enumerate(modules):
        factors[f"{module}.lora_A.weight"] = np.full((1, 1), 0.5, np.float32)
        factors[f"{module}.lora_B.weight"] = np.full((1, 1), 0.1 + k % 3, np.float32)
    record, layout = p.pack_factors(factors)
    adapter = {p.RANK: 1, p.ALPHA: 2.0, p.NODE_NAME: "hospital-a", **layout, **extra}
    records: dict[str, object] = {
        p.ARRAYS: record,
        p.METRICS: MetricRecord({p.NUM_EXAMPLES: 12}),
        p.ADAPTER: ConfigRecord(adapter),  # type: ignore[arg-type]
    }
    if privacy is not None:
        records[p.PRIVACY] = ConfigRecord(privacy)
    instruction = Message(RecordDict(), dst_node_id=4, message_type="train", group_id="1")
    instruction.metadata.__dict__["_message_id"] = "m4"
    return Message(RecordDict(records), reply_to=instruction)  # type: ignore[arg-type]


def _size(msg: Message) -> int:
    """What the cap counts: every config record with its name."""
    return sum(len(k) + p.config_bytes(r) for k, r in msg.content.config_records.items())


def _padded(total: int) -> Message:
    """A small honest reply whose `adapter` record (its name included) is ``total`` bytes."""
    adapter = _message(_llama_modules(1)).content.config_records[p.ADAPTER]
    pad = total - len(p.ADAPTER) - p.config_bytes(adapter) - len("padding")
    msg = _message(_llama_modules(1), padding="x" * pad)
    assert _size(msg) == total
    return msg


def test_config_bytes_counts_utf8_bytes_numbers_bools_and_empty_lists() -> None:
    record = ConfigRecord({"ab": "xyz", "n": 3, "f": [1.0, 2.0], "b": True, "by": b"12",
                           "é": "éa", "e": [], "s": ["a", "bc"]})  # fmt: skip
    #  2+3    1+8   1+16   1+1   2+2    2+3 (é is 2 bytes)  1+0   1+3
    assert p.config_bytes(record) == 5 + 9 + 17 + 2 + 4 + 5 + 1 + 4
    with pytest.raises(IndexError):  # why fedlora counts itself: Flower's count fails here
        ConfigRecord({"e": []}).count_bytes()


def test_a_reply_at_the_cap_is_used_and_one_byte_over_is_refused() -> None:
    update = parse_train_reply(_padded(CAP))
    assert isinstance(update, ClientUpdate), update
    refused = parse_train_reply(_padded(CAP + 1))
    assert isinstance(refused, Rejected)
    assert refused.name == "hospital-a"
    assert refused.reason.startswith(
        f"the reply's config records hold {CAP + 1} bytes (`adapter` {CAP + 1} bytes), over the "
        f"cap of {CAP} bytes (256 KiB) on a reply's config records"
    )


def test_the_cap_is_checked_before_the_layout_or_names_are_read(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def must_not_run(*_args: object, **_kwargs: object) -> list[str]:
        raise AssertionError("an oversized reply's layout was read")

    monkeypatch.setattr(packing, "check_layout", must_not_run)
    monkeypatch.setattr(packing, "check_modules_list", must_not_run)
    refused = parse_train_reply(_padded(CAP + 1))
    assert isinstance(refused, Rejected) and f"over the cap of {CAP} bytes" in refused.reason


@pytest.mark.parametrize(
    ("model", "modules", "kib"),
    [
        ("70B, 80 layers x 7", _llama_modules(80), 39.2),
        ("405B, 126 layers x 7", _llama_modules(126), 61.8),
        ("vision-language prefix, 80 x 7",
         _llama_modules(80, "base_model.model.model.language_model.layers"), 47.4),
        ("Mixtral 8x7B, every expert: 32 x (4 + 8 x 3)",
         [f"base_model.model.model.layers.{i}.{m}" for i in range(32) for m in (
             *ATTN, *(f"block_sparse_moe.experts.{e}.w{j}" for e in range(8) for j in (1, 2, 3)))],
         73.6),
    ],
)  # fmt: skip
def test_the_largest_legitimate_layouts_fit_with_margin(
    model: str, modules: list[str], kib: float
) -> None:
    """The figures quoted in strategies/protocol.py: a node name of 63 characters (the most a
    name may have) and a 64-digit fingerprint make each reply as large as it can honestly be."""
    msg = _message(modules, **{p.GLOBAL_FINGERPRINT: "f" * 64, p.QUANTIZATION: "none"})
    adapter = msg.content.config_records[p.ADAPTER]
    adapter[p.NODE_NAME] = "h" * 63
    size = p.config_bytes(adapter)
    assert round(size / 1024, 1) == kib, model
    assert size * 3.4 < CAP
    update = parse_train_reply(msg)
    assert isinstance(update, ClientUpdate), update
    assert sorted(update.factors) == sorted(modules)


def test_the_config_records_count_together_and_the_largest_are_named() -> None:
    """A long `dp-history` (24 bytes per change of σ or q) and the `adapter` record: at the cap
    together the reply is used, one byte over it is refused although each is under the cap."""
    history = [0.5, 0.01, 10.0] * (CAP // 2 // 24)
    privacy = ConfigRecord({p.DP_MODE: "dp-sgd", p.DP_HISTORY: history})  # type: ignore[dict-item]
    adapter = _message(_llama_modules(1)).content.config_records[p.ADAPTER]
    pad = CAP - p.config_bytes(privacy) - p.config_bytes(adapter) - len("padding")
    pad -= len(p.PRIVACY) + len(p.ADAPTER)  # the records' names count too

    def reply(extra: int) -> Message:
        return _message(_llama_modules(1), privacy=dict(privacy), padding="x" * (pad + extra))

    assert isinstance(parse_train_reply(reply(0)), ClientUpdate)
    refused = parse_train_reply(reply(1))
    assert isinstance(refused, Rejected)
    sizes = {k: len(k) + p.config_bytes(r) for k, r in reply(1).content.config_records.items()}
    assert sum(sizes.values()) == CAP + 1 and max(sizes.values()) < CAP
    first, second = sorted(sizes, key=lambda k: -sizes[k])
    assert f"(`{first}` {sizes[first]} bytes, `{second}` {sizes[second]} bytes)" in refused.reason


def test_an_evaluation_reply_over_the_cap_is_refused() -> None:
    instruction = Message(RecordDict(), dst_node_id=4, message_type="evaluate", group_id="1")
    instruction.metadata.__dict__["_message_id"] = "e4"

    def reply(name_bytes: int) -> Message:
        name = "a" * (name_bytes - len(p.ADAPTER) - len(p.NODE_NAME))
        content = RecordDict({
            p.METRICS: MetricRecord({p.EVAL_LOSS: 1.0, p.NUM_EXAMPLES: 5}),
            p.ADAPTER: ConfigRecord({p.NODE_NAME: name}),
        })  # fmt: skip
        return Message(content, reply_to=instruction)

    assert not isinstance(parse_eval_reply(reply(CAP)), Rejected)
    refused = parse_eval_reply(reply(CAP + 1))
    assert isinstance(refused, Rejected) and len(refused.name) == 64
    assert f"`adapter` {CAP + 1} bytes" in refused.reason


def test_an_oversized_reply_is_refused_before_its_privacy_figures_are_recorded() -> None:
    """The round's privacy record copies every reply's `dp-history`, also a refused reply's:
    an oversized record must be refused before that (strategies/flower/rounds.py)."""
    strategy, sent = _round("flora", list(NODES))
    honest = [_reply(sent[n], _factors(n)) for n in NODES]
    big = honest[1]
    history = [0.5, 0.01, 10.0] * (CAP // 24 + 1)
    big.content.config_records[p.PRIVACY] = ConfigRecord({p.DP_MODE: "dp-sgd",
                                                          p.DP_HISTORY: history})  # fmt: skip
    arrays, _ = strategy.aggregate_train(1, honest)
    assert arrays is not None
    entry = strategy.report(1).nodes[NODES[1]]
    assert f"over the cap of {CAP} bytes" in (entry.rejected or "")
    assert entry.dp_history is None and entry.dp_mode is None
    assert all(strategy.report(1).nodes[n].rejected is None for n in (NODES[0], NODES[2]))


def test_a_reply_name_that_is_not_a_string_is_not_rendered() -> None:
    """``str()`` of a list name could be any size: such a name reads as empty."""
    msg = _message(_llama_modules(1))
    msg.content.config_records[p.ADAPTER][p.NODE_NAME] = ["a", "b"]
    assert replies._name(msg) == ""


def test_many_empty_records_count_by_their_names() -> None:
    """A reply of many empty config records is as large as their names."""
    at_cap = {f"{i:08d}": ConfigRecord() for i in range(CAP // 8)}  # 8 bytes a name
    assert p.config_problem(at_cap) is None
    over = {**at_cap, "x": ConfigRecord()}
    assert f"hold {CAP + 1} bytes" in (p.config_problem(over) or "")

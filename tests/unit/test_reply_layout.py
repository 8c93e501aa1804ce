"""One flat array per train reply: packed, serialised by Flower, parsed back exactly; every
malformed layout refused with its reason (issue 14, lean replies)."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects
from flwr.supercore.inflatable.inflatable_utils import inflate_object_from_contents
from flwr.supercore.task_identity import TaskIdentity

from strategies import protocol as p
from strategies.flower.replies import ClientUpdate, Expectation, Rejected, parse_train_reply
from strategies.math import packing
from tests.wire import hostile_factors, raw_array

TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 1
MODULES = {"layers.0.q": (6, 4), "layers.0.v": (6, 4), "layers.1.mlp": (9, 6)}  # (out, in)
DIGEST = packing.module_digest(MODULES)


def _factors(rank: int = 3, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out = {}
    for module, (fan_out, fan_in) in MODULES.items():
        out[f"{module}.lora_A.weight"] = rng.standard_normal((rank, fan_in)).astype(np.float32)
        out[f"{module}.lora_B.weight"] = rng.standard_normal((fan_out, rank)).astype(np.float32)
    return out


def _reply(record: ArrayRecord, fields: dict, *, rank: int = 3, **over: object) -> Message:
    instruction = Message(RecordDict(), dst_node_id=4, message_type="train", group_id="1")
    instruction.metadata.__dict__["_message_id"] = "m4"
    adapter = {p.RANK: rank, p.ALPHA: 2.0 * rank, p.NODE_NAME: "bank-4", **fields, **over}
    content = RecordDict({
        p.ARRAYS: record,
        p.METRICS: MetricRecord({p.NUM_EXAMPLES: 12, p.TRAIN_LOSS: 1.5}),
        p.ADAPTER: ConfigRecord({k: v for k, v in adapter.items() if v is not None}),  # type: ignore[misc]
    })  # fmt: skip
    return Message(content, reply_to=instruction)


def _over_the_wire(msg: Message) -> tuple[Message, int]:
    """``msg`` deflated into Flower's objects (what is pushed over gRPC) and inflated back."""
    contents = {oid: obj.deflate() for oid, obj in get_all_nested_objects(msg).items()}
    nbytes = sum(len(c) for c in contents.values())
    back = inflate_object_from_contents(msg.object_id, contents)
    assert isinstance(back, Message)
    return back, nbytes


@pytest.mark.parametrize("digest", [DIGEST, None])
def test_pack_serialise_parse_round_trip_is_exact(digest: str | None) -> None:
    factors = _factors()
    record, layout = p.pack_factors(factors, modules_digest=digest)
    assert (p.MODULES_DIGEST in layout) == (digest is not None) != (p.MODULES in layout)
    msg, _ = _over_the_wire(_reply(record, layout))
    update = parse_train_reply(msg, Expectation(modules=MODULES))
    assert isinstance(update, ClientUpdate), update
    assert sorted(update.factors) == sorted(MODULES)
    for module, (a, b, scaling) in update.factors.items():
        assert a.dtype == np.float32 and scaling == 2.0
        np.testing.assert_array_equal(a, factors[f"{module}.lora_A.weight"])
        np.testing.assert_array_equal(b, factors[f"{module}.lora_B.weight"])


def test_the_layout_is_a_then_b_per_module_in_sorted_order() -> None:
    factors = _factors(rank=2)
    flat, modules, layout = packing.pack(
        {m: (factors[f"{m}.lora_A.weight"], factors[f"{m}.lora_B.weight"]) for m in MODULES}
    )
    assert modules == sorted(MODULES) and layout == [2, 4, 6, 2, 4, 6, 2, 6, 9]
    first = factors["layers.0.q.lora_A.weight"].ravel()
    np.testing.assert_array_equal(flat[: first.size], first)
    assert flat.size == 2 * (10 + 15 + 10)


def test_one_array_costs_less_on_the_wire_than_one_per_factor() -> None:
    """Flower's cost per array is gone: 6 arrays -> 1 saves at least 5 x 400 bytes."""
    factors = _factors()
    record, layout = p.pack_factors(factors, modules_digest=DIGEST)
    _, flat_bytes = _over_the_wire(_reply(record, layout))
    _, per_factor_bytes = _over_the_wire(_reply(p.to_record(factors), {}))
    assert per_factor_bytes - flat_bytes > 5 * 400


def test_the_node_names_its_modules_in_full_when_the_digest_is_not_theirs() -> None:
    _, layout = p.pack_factors(_factors(), modules_digest="0" * 32)
    assert layout[p.MODULES] == sorted(MODULES) and p.MODULES_DIGEST not in layout


def test_packing_refuses_factors_that_do_not_pair_up() -> None:
    with pytest.raises(ValueError, match="lacks its"):
        p.pack_factors({"m.lora_A.weight": np.ones((2, 3))})
    with pytest.raises(ValueError, match="need A"):
        p.pack_factors({"m.lora_A.weight": np.ones((2, 3)), "m.lora_B.weight": np.ones((4, 3))})


def _flat() -> np.ndarray:
    record, _ = p.pack_factors(_factors())
    return np.frombuffer(record[p.FACTORS].data, dtype=np.float32)


GOOD_LAYOUT = [3, 4, 6, 3, 4, 6, 3, 6, 9]
# Each malformed layout, and the words of the reason it is refused with.
MALFORMED = {
    "shapes sum short": ({p.LAYOUT: [3, 4, 6, 3, 4, 6, 3, 6, 8]}, None, "declares 102 floats"),
    "shapes sum long": ({p.LAYOUT: [*GOOD_LAYOUT, 1, 1, 1]}, None, "declares 107 floats"),
    "not triples": ({p.LAYOUT: GOOD_LAYOUT[:-1]}, None, "[r, in, out] per module"),
    "empty": ({p.LAYOUT: []}, None, "[r, in, out] per module"),
    "missing": ({p.LAYOUT: None}, None, "`layout` is None"),
    "text": ({p.LAYOUT: "3,4,6"}, None, "`layout` is '3,4,6'"),
    "zero": ({p.LAYOUT: [0, 4, 6, 3, 4, 6, 3, 6, 9]}, None, "integer >= 1"),
    "negative": ({p.LAYOUT: [3, -4, 6, 3, 4, 6, 3, 6, 9]}, None, "holds -4"),
    "float": ({p.LAYOUT: [float(x) for x in GOOD_LAYOUT]}, None, "holds 3.0"),
    "bool": ({p.LAYOUT: [True] * 9}, None, "holds True"),
    "other rank": ({}, {"rank": 2}, "need A (2, 4) and B (6, 2)"),
    "other dims": ({p.LAYOUT: [3, 6, 4, 3, 4, 6, 3, 6, 9]}, None, "need A (3, 4) and B (6, 3)"),
    "over max rank": ({}, {"rank": 300}, "outside 1..256"),
    "no names": ({p.MODULES: None}, None, "either `modules` or `modules-digest`"),
    "both": ({p.MODULES_DIGEST: DIGEST}, None, "either `modules` or `modules-digest`"),
    "foreign digest": ({p.MODULES: None, p.MODULES_DIGEST: "f" * 32}, None, "not the digest"),
    "unknown names": (
        {p.MODULES: ["layers.0.k", "layers.0.q", "layers.1.mlp"]}, None, "unexpected module",
    ),
    "unsorted": ({p.MODULES: ["layers.0.v", "layers.0.q", "layers.1.mlp"]}, None, "sorted"),
    "repeated": ({p.MODULES: ["layers.0.q", "layers.0.q", "layers.1.mlp"]}, None, "repeats"),
    "too few names": ({p.MODULES: ["layers.0.q", "layers.0.v"]}, None, "names 2 modules"),
    "not names": ({p.MODULES: "layers.0.q"}, None, "a list of module names"),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_a_malformed_layout_is_refused_naming_what_is_wrong(case: str) -> None:
    over, kwargs, reason = MALFORMED[case]
    record, layout = p.pack_factors(_factors())
    msg, _ = _over_the_wire(_reply(record, layout, **(kwargs or {}), **over))
    result = parse_train_reply(msg, Expectation(modules=MODULES))
    assert isinstance(result, Rejected) and reason in result.reason, result


def test_the_digest_needs_a_known_module_set() -> None:
    record, layout = p.pack_factors(_factors(), modules_digest=DIGEST)
    result = parse_train_reply(_reply(record, layout), Expectation())
    assert isinstance(result, Rejected) and "of the 0 expected modules" in result.reason


FLAT_RECORDS = {
    "float64": (lambda: ArrayRecord({p.FACTORS: raw_array(_flat().astype(np.float64))}),
                "'float64' as 'raw-float32-le': must be float32"),
    "int32": (lambda: ArrayRecord({p.FACTORS: raw_array(_flat().astype(np.int32))}),
              "'int32' as"),
    "numpy stype": (lambda: ArrayRecord({p.FACTORS: Array(_flat())}), "'numpy.ndarray'"),
    "two arrays": (lambda: ArrayRecord({p.FACTORS: raw_array(_flat()), "b": raw_array(_flat())}),
                   "exactly one array `factors`"),
    "other name": (lambda: ArrayRecord({"weights": raw_array(_flat())}), "holds `weights`"),
    "empty": (lambda: ArrayRecord(), "holds nothing"),
    "matrix": (lambda: ArrayRecord({p.FACTORS: Array(dtype="float32", shape=(3, 35),
                                                     stype=p.RAW_STYPE, data=_flat().tobytes())}),
               "has shape (3, 35)"),
    "bytes short": (lambda: ArrayRecord({p.FACTORS: Array(dtype="float32", shape=(105,),
                                                          stype=p.RAW_STYPE,
                                                          data=_flat().tobytes()[:-1])}),
                    "4 bytes per float"),
    "one float short": (lambda: ArrayRecord({p.FACTORS: raw_array(_flat()[:-1])}),
                        "declares 105 floats but `factors` holds 104"),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(FLAT_RECORDS))
def test_a_malformed_factors_array_is_refused_naming_what_is_wrong(case: str) -> None:
    make, reason = FLAT_RECORDS[case]
    _, layout = p.pack_factors(_factors(), modules_digest=DIGEST)
    msg, _ = _over_the_wire(_reply(make(), layout))
    result = parse_train_reply(msg, Expectation(modules=MODULES))
    assert isinstance(result, Rejected) and reason in result.reason, result


def test_every_current_check_still_applies_to_the_unpacked_factors() -> None:
    factors = _factors()
    factors["layers.1.mlp.lora_B.weight"][0, 0] = np.nan
    record, layout = hostile_factors(factors)
    result = parse_train_reply(_reply(record, layout), Expectation(modules=MODULES))
    assert isinstance(result, Rejected) and "`layers.1.mlp`" in result.reason
    assert "NaN or inf" in result.reason
    big = {k: v * 1e6 for k, v in _factors().items()}
    record, layout = p.pack_factors(big, modules_digest=DIGEST)
    result = parse_train_reply(_reply(record, layout), Expectation(modules=MODULES))
    assert isinstance(result, Rejected) and "max-factor-norm" in result.reason

"""strategies.protocol.view_record: the instruction's arrays read without copying them — equal to
Flower's own ``np.load`` reading (from_record), read-only, and never more than the bytes say."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import array_shapes, arrays

from strategies import protocol as p

FLOATS = st.sampled_from([np.float16, np.float32, np.float64, np.dtype(">f4")])


@settings(max_examples=60, deadline=None)
@given(arrays(FLOATS, array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=5)))
def test_a_view_equals_flowers_own_reading(value: np.ndarray) -> None:
    record = ArrayRecord({"a": Array(value)})
    view, loaded = p.view_record(record)["a"], p.from_record(record)["a"]
    assert view.dtype == loaded.dtype and view.shape == loaded.shape
    np.testing.assert_array_equal(view, loaded)
    if view.size:
        assert not view.flags.writeable  # a view of the message's bytes
        assert np.shares_memory(view, np.frombuffer(record["a"].data, np.uint8))


def test_the_global_adapter_as_sent_is_viewed_without_a_copy() -> None:
    rng = np.random.default_rng(0)
    arrays = {"m.lora_A.weight": rng.standard_normal((4, 6)), "m.lora_B.weight": np.zeros((5, 4))}
    viewed = p.view_record(p.to_record(arrays))
    for key, value in arrays.items():
        assert viewed[key].dtype == np.float32
        np.testing.assert_array_equal(viewed[key], value.astype(np.float32))


@pytest.mark.parametrize(
    "value",
    [np.arange(6, dtype=np.int64).reshape(2, 3), np.asfortranarray(np.ones((3, 2), np.float32))],
    ids=["integers", "fortran-order"],
)
def test_anything_but_a_plain_float_array_is_loaded_by_flower(value: np.ndarray) -> None:
    record = ArrayRecord({"a": Array(value)})
    got = p.view_record(record)["a"]
    np.testing.assert_array_equal(got, value)
    assert got.flags.writeable  # np.load's own copy


def test_bytes_that_disagree_with_the_header_are_never_read_past() -> None:
    good = Array(np.ones((4, 4), np.float32))
    short = Array(dtype=good.dtype, shape=good.shape, stype=good.stype, data=good.data[:-4])
    with pytest.raises(ValueError):  # np.load's own refusal, not a view past the end
        p.view_record(ArrayRecord({"a": short}))

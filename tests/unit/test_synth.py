"""Unit tests of the seeded synthetic institutional text (client/data/synth.py)."""

from __future__ import annotations

import json
import random
import re
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from client.data.synth import (
    MAX_CHARS,
    MIN_CHARS,
    PROFILES,
    profile_for_partition,
    synth_partition,
    synth_records,
    write_partition,
)

CLINICAL_TERMS = frozenset(
    {"troponin", "admitted", "ecg", "mg", "kg", "fever", "vaccines", "dx", "rx", "temp", "bp"}
)
BANK_TERMS = frozenset({"txn", "iban", "atm", "eur", "usd", "gbp", "ach", "aml", "flagged"})


def words(records: list[dict[str, str]]) -> Counter[str]:
    return Counter(w for r in records for w in re.findall(r"[a-z]+", r["text"].lower()))


def texts(records: list[dict[str, str]]) -> list[str]:
    return [r["text"] for r in records]


def test_profiles_and_partition_mapping() -> None:
    assert PROFILES == ("hospital-cardiology", "hospital-pediatrics", "bank-transactions")
    assert [profile_for_partition(i) for i in range(7)] == [*PROFILES, *PROFILES, PROFILES[0]]


@pytest.mark.parametrize("profile", PROFILES)
def test_records_are_deterministic(profile: str) -> None:
    assert synth_records(profile, n=50, seed=7) == synth_records(profile, n=50, seed=7)


@pytest.mark.parametrize("profile", PROFILES)
def test_different_seeds_differ(profile: str) -> None:
    first = set(texts(synth_records(profile, n=50, seed=1)))
    second = set(texts(synth_records(profile, n=50, seed=2)))
    assert len(first & second) <= 2


def test_shorter_run_is_a_prefix() -> None:
    assert synth_records(PROFILES[0], n=5, seed=3) == synth_records(PROFILES[0], n=20, seed=3)[:5]


@pytest.mark.parametrize("profile", PROFILES)
def test_record_shape_length_and_ascii(profile: str) -> None:
    records = synth_records(profile, n=500, seed=0)
    assert len(records) == 500
    for record in records:
        assert list(record) == ["text"]
        assert MIN_CHARS <= len(record["text"]) <= MAX_CHARS
        assert record["text"].isascii()
        assert "\n" not in record["text"]


@pytest.mark.parametrize("profile", PROFILES)
def test_records_vary(profile: str) -> None:
    records = texts(synth_records(profile, n=300, seed=0))
    assert len(set(records)) >= 295
    assert len({r.split()[0] for r in records}) >= 4


def test_zero_records() -> None:
    assert synth_records(PROFILES[2], n=0, seed=0) == []


def test_global_rng_untouched() -> None:
    random.seed(123)
    state = random.getstate()
    synth_partition(1, n_train=20, n_eval=5)
    assert random.getstate() == state


def test_bank_records_have_no_clinical_terms() -> None:
    bank = words(synth_records("bank-transactions", n=1000, seed=0))
    assert not CLINICAL_TERMS & set(bank)
    assert {"txn", "ref", "flagged"} <= set(bank)


@pytest.mark.parametrize("profile", PROFILES[:2])
def test_clinical_records_have_no_bank_terms(profile: str) -> None:
    clinical = words(synth_records(profile, n=1000, seed=0))
    assert not BANK_TERMS & set(clinical)


def test_hospital_profiles_differ_in_vocabulary() -> None:
    cardio = words(synth_records("hospital-cardiology", n=1000, seed=0))
    peds = words(synth_records("hospital-pediatrics", n=1000, seed=0))
    assert cardio["troponin"] > 50 and peds["troponin"] == 0
    assert peds["vaccines"] > 20 and cardio["vaccines"] == 0
    assert {"mo", "yo", "otitis"} <= set(peds) and not {"mo", "yo", "otitis"} & set(cardio)
    shared = sum((cardio & peds).values()) / sum(cardio.values())
    assert shared < 0.25


def test_partition_splits_sizes_and_profiles() -> None:
    train, evaluation = synth_partition(2, n_train=30, n_eval=10, seed=5)
    assert (len(train), len(evaluation)) == (30, 10)
    assert all(r["text"].split()[0].isupper() for r in train + evaluation)


def test_train_and_eval_are_disjointish() -> None:
    train, evaluation = synth_partition(0)
    overlap = set(texts(train)) & set(texts(evaluation))
    assert len(overlap) <= 2
    assert texts(train)[:10] != texts(evaluation)[:10]


def test_partitions_with_same_profile_differ() -> None:
    assert profile_for_partition(0) == profile_for_partition(3)
    train_0, eval_0 = synth_partition(0, n_train=50, n_eval=20)
    train_3, eval_3 = synth_partition(3, n_train=50, n_eval=20)
    assert len(set(texts(train_0)) & set(texts(train_3))) <= 1
    assert eval_0 != eval_3


def test_partition_depends_on_seed() -> None:
    assert synth_partition(1, n_train=20, n_eval=5, seed=0) != synth_partition(
        1, n_train=20, n_eval=5, seed=1
    )
    assert synth_partition(1, n_train=20, n_eval=5) == synth_partition(1, n_train=20, n_eval=5)


def test_write_partition_jsonl_round_trip(tmp_path: Path) -> None:
    out_dir = tmp_path / "node-4"
    assert write_partition(out_dir, 4, n_train=12, n_eval=3, seed=9) == out_dir
    train, evaluation = synth_partition(4, n_train=12, n_eval=3, seed=9)
    for name, expected in (("train.jsonl", train), ("eval.jsonl", evaluation)):
        lines = (out_dir / name).read_text(encoding="utf-8").splitlines()
        assert [json.loads(line) for line in lines] == expected


def test_unknown_profile_error_names_value_and_choices() -> None:
    with pytest.raises(ValueError, match="hospital-dentistry") as excinfo:
        synth_records("hospital-dentistry", n=1, seed=0)
    assert all(profile in str(excinfo.value) for profile in PROFILES)


def test_negative_n_is_refused() -> None:
    with pytest.raises(ValueError, match="-1"):
        synth_records(PROFILES[0], n=-1, seed=0)
    with pytest.raises(ValueError):
        synth_partition(0, n_train=-3)


@settings(max_examples=40, deadline=None)
@given(partition_id=st.integers(0, 1000), seed=st.integers(-(2**63), 2**63))
def test_any_partition_and_seed_give_valid_records(partition_id: int, seed: int) -> None:
    train, evaluation = synth_partition(partition_id, n_train=8, n_eval=4, seed=seed)
    assert len(train) == 8 and len(evaluation) == 4
    assert all(MIN_CHARS <= len(r["text"]) <= MAX_CHARS for r in train + evaluation)

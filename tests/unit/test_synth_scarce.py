"""Unit tests of the scarce setting's six institutions (client/data/synth/institutions.py)."""

from __future__ import annotations

import json
from itertools import combinations
from pathlib import Path

import pytest

from client.data.synth import (
    MAX_CHARS,
    MIN_CHARS,
    SCARCE_NAMES,
    synth_institution,
    write_setting,
)
from client.data.synth.institutions import institution, word_share
from server.cli.main import main


def texts(records: list[dict[str, str]]) -> list[str]:
    return [r["text"] for r in records]


def train_texts(name: str, n: int = 48) -> list[str]:
    return texts(synth_institution(name, n_train=n, n_eval=0)[0])


def test_six_institutions_two_per_domain() -> None:
    domains = [institution(name).profile for name in SCARCE_NAMES]
    assert len(SCARCE_NAMES) == 6 == len(set(SCARCE_NAMES))
    assert sorted(domains.count(d) for d in set(domains)) == [2, 2, 2]


def test_seeded_sizes_and_bounds() -> None:
    for name in SCARCE_NAMES:
        train, evaluation = synth_institution(name, seed=3)
        assert (len(train), len(evaluation)) == (48, 64)
        assert synth_institution(name, seed=3) == (train, evaluation)
        assert synth_institution(name, seed=4) != (train, evaluation)
        assert all(MIN_CHARS <= len(t) <= MAX_CHARS and t.isascii() for t in texts(train))
        assert len(set(texts(train)) & set(texts(evaluation))) <= 1
        assert synth_institution(name, n_train=5, seed=3)[0] == train[:5]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_domains_overlap_as_documented(seed: int) -> None:
    data = {n: texts(synth_institution(n, seed=seed)[0]) for n in SCARCE_NAMES}
    for first, second in combinations(SCARCE_NAMES, 2):
        a, b = institution(first).profile, institution(second).profile
        shares = (word_share(data[first], data[second]), word_share(data[second], data[first]))
        if a == b:
            assert min(shares) >= 0.55, (first, second, shares)
        elif "bank-transactions" in (a, b):
            assert max(shares) <= 0.15, (first, second, shares)
        else:
            assert max(shares) <= 0.35, (first, second, shares)


def test_partners_differ_in_case_mix_and_style() -> None:
    north, south = train_texts("cardiology-north", 400), train_texts("cardiology-south", 400)
    assert sum(t.startswith("Cath lab") for t in north) > 3 * sum(
        t.startswith("Cath lab") for t in south
    )
    assert any("Patient " in t for t in south) and not any("Patient " in t for t in north)
    retail, corporate = train_texts("bank-retail", 200), train_texts("bank-corporate", 200)
    assert all(t == t.lower() for t in corporate) and not all(t == t.lower() for t in retail)
    west = train_texts("pediatrics-west", 300)
    assert any(" months " in t for t in west) and not any("monthsuth" in t for t in west)


def test_unknown_institution_names_the_choices() -> None:
    with pytest.raises(ValueError, match="cardiology-east") as excinfo:
        synth_institution("cardiology-east")
    assert all(name in str(excinfo.value) for name in SCARCE_NAMES)


def test_data_synth_scarce_writes_six_folders(tmp_path: Path) -> None:
    assert main(["data", "synth", "--setting", "scarce", "--out", str(tmp_path)]) == 0
    assert sorted(d.name for d in tmp_path.iterdir()) == sorted(SCARCE_NAMES)
    lines = (tmp_path / "bank-retail" / "train.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == synth_institution("bank-retail")[0]


def test_write_setting_domains_is_the_partitions(tmp_path: Path) -> None:
    folders = write_setting(tmp_path, "domains", partitions=4, n_train=3, n_eval=2)
    assert [f.name for f in folders] == [
        "hospital-cardiology", "hospital-pediatrics", "bank-transactions",
        "hospital-cardiology-1"]  # fmt: skip
    with pytest.raises(ValueError, match="`--setting` is 'tiny'"):
        write_setting(tmp_path, "tiny")

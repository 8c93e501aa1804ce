"""``fedlora data synth --nodes N``: the many-institution roster (client/data/synth/many.py)."""

from __future__ import annotations

import json
import re
import statistics
from collections import Counter
from itertools import combinations
from pathlib import Path

import pytest

from client.data.synth import MAX_CHARS, MIN_CHARS
from client.data.synth.institutions import institution_records, word_share
from client.data.synth.many import many_institution, write_institutions
from protos.tokens import check_node_name
from server.cli.main import main


def records(index: int, *, seed: int = 0, n: int = 48) -> list[str]:
    inst = many_institution(index)
    rows = institution_records(inst, n=n, seed=seed, split="train", min_chars=MIN_CHARS,
                               max_chars=MAX_CHARS)  # fmt: skip
    return [r["text"] for r in rows]


def word_distance(first: list[str], second: list[str]) -> float:
    """Total variation distance between the two texts' word frequencies (0 same, 1 disjoint)."""
    a = Counter(w for t in first for w in re.findall(r"[a-z]+", t.lower()))
    b = Counter(w for t in second for w in re.findall(r"[a-z]+", t.lower()))
    na, nb = sum(a.values()), sum(b.values())
    return 0.5 * sum(abs(a[w] / na - b[w] / nb) for w in set(a) | set(b))


def test_a_thousand_names_are_unique_valid_node_names_cycling_the_domains() -> None:
    roster = [many_institution(i) for i in range(1000)]
    names = [inst.name for inst in roster]
    assert len(set(names)) == 1000
    assert all(check_node_name(name) == name for name in names)
    assert names[:4] == ["cardiology-1", "pediatrics-2", "banking-3", "cardiology-4"]
    assert [inst.profile for inst in roster[:3]] == [
        "hospital-cardiology", "hospital-pediatrics", "bank-transactions"]  # fmt: skip
    assert Counter(inst.profile for inst in roster)["bank-transactions"] == 333


def test_each_institution_has_its_own_case_mix_and_neighbours_in_a_domain_their_own_style() -> None:
    roster = [many_institution(i) for i in range(30)]
    assert len({inst.weights for inst in roster}) == 30
    assert all(min(inst.weights) > 0 for inst in roster)
    assert many_institution(3) == many_institution(3)  # fixed by the index alone
    note = "Pt 45M | Dx: ADHF"  # cardiology-1, -4, -7, -10: plain, spelled out, lower, plain
    styled = [many_institution(i).style(note) for i in (0, 3, 6, 9)]
    assert styled == [note, "Patient 45M; Diagnosis: ADHF", "pt 45m | dx: adhf", note]
    assert all(t == t.lower() for t in records(6, n=8))


def test_institutions_of_a_domain_differ_more_than_one_institution_redrawn() -> None:
    """Non-IID within a domain: the mean word distance between two institutions of one domain
    (measured 0.56 over the first 18) is well above that between one institution's records under
    two seeds (0.19); across domains the vocabularies barely meet."""
    within = [word_distance(records(i), records(j))
              for i, j in combinations(range(18), 2) if i % 3 == j % 3]  # fmt: skip
    redrawn = [word_distance(records(i), records(i, seed=1)) for i in range(18)]
    assert statistics.mean(within) > 2 * statistics.mean(redrawn)
    cardiology, banking = records(0), records(2)
    assert max(word_share(cardiology, banking), word_share(banking, cardiology)) <= 0.15


def test_written_folders_are_seeded_bounded_and_independent_of_the_count(tmp_path: Path) -> None:
    few = write_institutions(tmp_path / "few", 4, n_train=6, n_eval=3, seed=2)
    many = write_institutions(tmp_path / "many", 10, n_train=6, n_eval=3, seed=2)
    other = write_institutions(tmp_path / "other", 4, n_train=6, n_eval=3, seed=3)
    assert [f.name for f in few] == [f.name for f in many[:4]]
    for a, b, c in zip(few, many, other, strict=False):
        for file in ("train.jsonl", "eval.jsonl"):
            assert (a / file).read_text() == (b / file).read_text() != (c / file).read_text()
    rows = [json.loads(line) for line in (few[1] / "train.jsonl").read_text().splitlines()]
    assert len(rows) == 6 and all(MIN_CHARS <= len(r["text"]) <= MAX_CHARS for r in rows)
    with pytest.raises(ValueError, match="`--nodes` is 0: use an integer >= 1"):
        write_institutions(tmp_path / "none", 0)


def test_cli_writes_n_folders_and_sums_up_a_long_roster(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["data", "synth", "--nodes", "30", "--train", "2", "--eval", "1", "--out"]
    assert main([*args, str(tmp_path / "d")]) == 0
    assert len(list((tmp_path / "d").iterdir())) == 30
    out = capsys.readouterr().out.splitlines()
    assert out == [f"{tmp_path / 'd'}: 30 institutions (10 cardiology, 10 pediatrics, 10 banking), "
                   "2 training and 1 eval records each"]  # fmt: skip
    assert (
        main(["data", "synth", "--nodes", "2", "--train", "2", "--out", str(tmp_path / "e")]) == 0
    )
    assert len(capsys.readouterr().out.splitlines()) == 2  # one line per folder


@pytest.mark.parametrize(
    ("extra", "named"),
    [(["--setting", "scarce"], "`--nodes` is 10 with `--setting scarce`"),
     (["--partitions", "4"], "`--partitions` is 4 and `--nodes` is 10"),
     (["--train", "-1"], "`--train` is -1")],
)  # fmt: skip
def test_cli_refuses_combinations_it_cannot_honour(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], named: str
) -> None:
    argv = ["data", "synth", "--nodes", "10", "--out", str(tmp_path / "d"), *extra]
    assert main(argv) == 2
    assert named in capsys.readouterr().err
    assert not (tmp_path / "d").exists()

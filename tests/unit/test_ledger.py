"""The privacy ledger: ε is opacus's RDP accountant on the logged history, kept across runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from opacus.accountants import RDPAccountant

from client.privacy.ledger import (
    COUNT,
    LEDGER_FILE,
    PLANNED,
    Ledger,
    LedgerError,
    Release,
    data_fingerprint,
    epsilon_of,
    load_ledger,
    new_release,
    save_ledger,
)
from client.privacy.round import calibrate, reply_fields
from client.privacy.settings import PrivacySettings
from strategies import protocol as p

FP = data_fingerprint(["a record", "another record"])


def test_reference_values_of_opacus_rdp() -> None:
    assert epsilon_of([(1.1, 0.01, 10_000)], delta=1e-5) == pytest.approx(5.632, abs=1e-3)
    assert epsilon_of([(1.0, 0.1, 100)], delta=1e-5) == pytest.approx(7.899, abs=1e-3)
    assert epsilon_of([], delta=1e-5) == 0.0


def _ledger(*releases: tuple[float, float, int]) -> Ledger:
    ledger = Ledger(fingerprint=FP, delta=1e-5)
    for rnd, (sigma, q, steps) in enumerate(releases, start=1):
        ledger = ledger.with_release(
            new_release(
                "dp-sgd", noise_multiplier=sigma, sample_rate=q, steps=steps, server_round=rnd
            )
        )
    return ledger


def test_ledger_epsilon_equals_an_opacus_accountant_stepped_through_the_same_rounds() -> None:
    rounds = [(1.1, 0.05, 20), (1.1, 0.05, 20), (0.9, 0.1, 10), (1.1, 0.05, 20)]
    accountant = RDPAccountant()
    for sigma, q, steps in rounds:
        for _ in range(steps):
            accountant.step(noise_multiplier=sigma, sample_rate=q)
    ledger = _ledger(*rounds)
    assert ledger.history() == [(1.1, 0.05, 40), (0.9, 0.1, 10), (1.1, 0.05, 20)]
    assert ledger.history() == accountant.history
    assert ledger.epsilon() == pytest.approx(accountant.get_epsilon(delta=1e-5), abs=1e-3)
    assert ledger.steps == 70


def test_ledger_survives_a_restart_and_continues(tmp_path: Path) -> None:
    first = _ledger((1.0, 0.1, 50))
    save_ledger(tmp_path, first)
    again = load_ledger(tmp_path, fingerprint=FP, delta=1e-5)
    assert again == first
    more = again.with_release(Release("dp-sgd", 1.0, 0.1, 50, 2))
    save_ledger(tmp_path, more)
    reread = load_ledger(tmp_path, fingerprint=FP, delta=1e-5)
    assert reread.epsilon() == pytest.approx(epsilon_of([(1.0, 0.1, 100)], delta=1e-5), abs=1e-3)
    assert [p.name for p in tmp_path.iterdir()] == [LEDGER_FILE]  # no temporary file left
    written = json.loads((tmp_path / LEDGER_FILE).read_text())
    assert written["epsilon"] == pytest.approx(reread.epsilon())


def test_no_ledger_means_nothing_spent(tmp_path: Path) -> None:
    ledger = load_ledger(tmp_path / "new", fingerprint=FP, delta=1e-5)
    assert ledger.releases == () and ledger.epsilon() == 0.0


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        ("{not json", "cannot be read"),
        ('{"format": "something-else"}', "not a fedlora privacy ledger"),
        ('{"format": "fedlora-privacy-ledger", "version": 99}', "version"),
        (
            '{"format": "fedlora-privacy-ledger", "version": 1, "delta": 1e-5, "fingerprint": "x",'
            ' "releases": [{"mode": "dp-sgd", "noise_multiplier": -1, "sample_rate": 0.1,'
            ' "steps": 3}]}',
            "out of range",
        ),
    ],
)
def test_a_damaged_ledger_stops_the_node_and_is_left_alone(
    tmp_path: Path, content: str, reason: str
) -> None:
    (tmp_path / LEDGER_FILE).write_text(content)
    with pytest.raises(LedgerError, match=reason) as info:
        load_ledger(tmp_path, fingerprint=FP, delta=1e-5)
    assert "never resets" in str(info.value)
    assert (tmp_path / LEDGER_FILE).read_text() == content


def test_a_ledger_of_other_data_is_refused(tmp_path: Path) -> None:
    save_ledger(tmp_path, _ledger((1.0, 0.1, 10)))
    other = data_fingerprint(["a record", "another record", "one more"])
    with pytest.raises(LedgerError, match="belongs to data set"):
        load_ledger(tmp_path, fingerprint=other, delta=1e-5)


def test_delta_may_only_shrink_against_the_ledger(tmp_path: Path) -> None:
    save_ledger(tmp_path, _ledger((1.0, 0.1, 10)))
    with pytest.raises(LedgerError, match=r"`dp-delta` is 0\.0001"):
        load_ledger(tmp_path, fingerprint=FP, delta=1e-4)
    smaller = load_ledger(tmp_path, fingerprint=FP, delta=1e-6)
    assert smaller.delta == 1e-6 and smaller.epsilon() > _ledger((1.0, 0.1, 10)).epsilon()


def test_fingerprint_sees_record_boundaries() -> None:
    assert data_fingerprint(["ab", "c"]) != data_fingerprint(["a", "bc"])


@settings(max_examples=8, deadline=None)
@given(
    target=st.floats(min_value=1.0, max_value=10.0),
    q=st.sampled_from([0.01, 0.05, 0.25, 1.0]),
    steps=st.integers(min_value=1, max_value=200),
)
def test_calibrated_noise_achieves_at_most_the_target(target: float, q: float, steps: int) -> None:
    privacy = PrivacySettings(mode="dp-sgd", target_epsilon=target)
    sigma = calibrate(privacy, sample_rate=q, steps=steps)
    assert epsilon_of([(sigma, q, steps)], delta=1e-5) <= target


def test_reply_fields_are_cumulative_and_carry_history_only_when_it_changed() -> None:
    steady = _ledger((1.0, 0.1, 10), (1.0, 0.1, 10))
    metrics, config = reply_fields("dp-sgd", steady)
    assert metrics[p.DP_STEPS] == 20 and metrics[p.DP_EPSILON_RECORD] == pytest.approx(
        steady.epsilon()
    )
    assert config == {p.DP_MODE: "dp-sgd"} and p.DP_EPSILON_INSTITUTION not in metrics
    changed = _ledger((1.0, 0.1, 10), (2.0, 0.1, 10))
    _, config = reply_fields("dp-sgd", changed)
    assert config[p.DP_HISTORY] == [1.0, 0.1, 10.0, 2.0, 0.1, 10.0]
    assert reply_fields("none", None) == ({}, {p.DP_MODE: "none"})


def test_an_unreachable_target_is_a_settings_error_naming_it() -> None:
    from common.config import SettingsError

    privacy = PrivacySettings(mode="dp-sgd", target_epsilon=1e-6)
    with pytest.raises(SettingsError, match="`dp-target-epsilon` is 1e-06"):
        calibrate(privacy, sample_rate=1.0, steps=1000)


def _mixed(*modes: str) -> Ledger:
    ledger = Ledger(fingerprint=FP, delta=1e-5)
    for rnd, mode in enumerate(modes, start=1):
        sigma, q, steps = (1.0, 0.1, 10) if mode == "dp-sgd" else (2.0, 1.0, 1)
        ledger = ledger.with_release(new_release(mode, noise_multiplier=sigma, sample_rate=q,
                                                 steps=steps, server_round=rnd))  # fmt: skip
    return ledger


def test_per_record_and_per_institution_guarantees_are_accounted_apart() -> None:
    lora = _mixed("dp-lora", "dp-lora")
    assert lora.institution_epsilon() == pytest.approx(epsilon_of([(2.0, 1.0, 2)], delta=1e-5))
    assert lora.epsilon() == lora.institution_epsilon()  # a data-set release protects records
    mixed = _mixed("dp-sgd", "dp-lora")
    # per record: both releases, composed by opacus; per institution: none (dp-sgd gives none)
    both = epsilon_of([(1.0, 0.1, 10), (2.0, 1.0, 1)], delta=1e-5)
    assert mixed.epsilon() == pytest.approx(both)
    assert mixed.epsilon() > _mixed("dp-sgd").epsilon()
    assert mixed.institution_epsilon() is None and _mixed("dp-sgd").institution_epsilon() is None
    metrics, _ = reply_fields("dp-lora", mixed)
    assert metrics[p.DP_EPSILON_RECORD] == pytest.approx(both)
    assert p.DP_EPSILON_INSTITUTION not in metrics
    metrics, _ = reply_fields("dp-lora", lora)
    assert metrics[p.DP_EPSILON_INSTITUTION] == pytest.approx(lora.institution_epsilon())
    counted = lora.with_release(new_release(COUNT, noise_multiplier=20.0, sample_rate=1.0,
                                            steps=1, server_round=0))  # fmt: skip
    assert counted.institution_epsilon() is None and counted.steps == lora.steps


def test_a_planned_release_counts_and_survives_a_restart_until_confirmed(tmp_path: Path) -> None:
    planned = new_release("dp-sgd", noise_multiplier=1.0, sample_rate=0.1, steps=50,
                          server_round=1, status=PLANNED)  # fmt: skip
    ledger = _ledger((1.0, 0.1, 50)).with_release(planned)
    save_ledger(tmp_path, ledger)
    again = load_ledger(tmp_path, fingerprint=FP, delta=1e-5)
    assert again.releases[-1].status == PLANNED
    assert again.epsilon() == pytest.approx(epsilon_of([(1.0, 0.1, 100)], delta=1e-5))
    assert again.confirmed(planned.id).releases[-1].status == "confirmed"
    with pytest.raises(LedgerError, match="missing from the ledger"):
        again.confirmed("not-there")


def test_a_version_1_ledger_reads_with_every_release_confirmed(tmp_path: Path) -> None:
    (tmp_path / LEDGER_FILE).write_text(json.dumps({
        "format": "fedlora-privacy-ledger", "version": 1, "delta": 1e-5, "fingerprint": FP,
        "releases": [{"mode": "dp-sgd", "noise_multiplier": 1.0, "sample_rate": 0.1,
                      "steps": 100}]}))  # fmt: skip
    ledger = load_ledger(tmp_path, fingerprint=FP, delta=1e-5)
    assert ledger.releases[0].status == "confirmed" and ledger.noised_count is None
    assert ledger.epsilon() == pytest.approx(7.899, abs=1e-3)


def test_a_target_covers_the_noised_count_too() -> None:
    privacy = PrivacySettings(mode="dp-sgd", target_epsilon=2.0)
    prior = [(20.0, 1.0, 1)]
    alone = calibrate(privacy, sample_rate=0.1, steps=100)
    sigma = calibrate(privacy, sample_rate=0.1, steps=100, prior=prior)
    together = epsilon_of([*prior, (sigma, 0.1, 100)], delta=1e-5)
    assert sigma > alone and together <= 2.0
    assert together > 2.0 - 0.01  # and no more noise than needed

"""The privacy ledger: ε is opacus's RDP accountant on the logged history, kept across runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from opacus.accountants import RDPAccountant

from client.privacy.ledger import (
    LEDGER_FILE,
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
    assert metrics[p.DP_STEPS] == 20 and metrics[p.DP_EPSILON] == pytest.approx(steady.epsilon())
    assert config == {p.DP_MODE: "dp-sgd"}
    changed = _ledger((1.0, 0.1, 10), (2.0, 0.1, 10))
    _, config = reply_fields("dp-sgd", changed)
    assert config[p.DP_HISTORY] == [1.0, 0.1, 10.0, 2.0, 0.1, 10.0]
    assert reply_fields("none", None) == ({}, {p.DP_MODE: "none"})


def test_an_unreachable_target_is_a_settings_error_naming_it() -> None:
    from common.config import SettingsError

    privacy = PrivacySettings(mode="dp-sgd", target_epsilon=1e-6)
    with pytest.raises(SettingsError, match="`dp-target-epsilon` is 1e-06"):
        calibrate(privacy, sample_rate=1.0, steps=1000)

"""Checkpoints: exact round trip, atomic replacement, and refusal of another run's settings."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from common import files
from common.config import DEFAULT_RUN_CONFIG
from server.run import checkpoint as ck


def _checkpoint(round_: int, **config: object) -> ck.Checkpoint:
    rng = np.random.default_rng(round_)
    return ck.Checkpoint(
        round=round_,
        arrays={"m.lora_A.weight": rng.standard_normal((3, 5)),
                "m.lora_B.weight": rng.standard_normal((4, 3))},
        strategy_state={"salt": "abc", "names": {"1001": "bank"}},
        run_config={**DEFAULT_RUN_CONFIG, **config},  # type: ignore[dict-item]
        base_model={"config.json sha256": "00ff"},
        records=[{"round": r, "loss": 1.0 / (r + 1)} for r in range(round_ + 1)],
        rng={"seed": 0},
    )  # fmt: skip


def test_a_checkpoint_round_trips_exactly(tmp_path: Path) -> None:
    saved = _checkpoint(2)
    ck.save_checkpoint(tmp_path, saved)
    loaded = ck.load_checkpoint(tmp_path)
    assert loaded.round == 2 and loaded.records == saved.records
    assert loaded.strategy_state == saved.strategy_state and loaded.run_config == saved.run_config
    for key, value in saved.arrays.items():
        assert loaded.arrays[key].dtype == np.float64
        np.testing.assert_array_equal(loaded.arrays[key], value)


@pytest.mark.parametrize("crash_in", ["write", "fsync", "replace"])
def test_a_crash_while_writing_leaves_the_previous_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, crash_in: str
) -> None:
    ck.save_checkpoint(tmp_path, _checkpoint(1))

    def crash(*args: object, **kwargs: object) -> None:
        raise OSError("power cut")

    if crash_in == "write":  # half the bytes reach the temp file, then the process dies
        real_fdopen = os.fdopen

        class HalfWriter:
            def __init__(self, fd: int, mode: str) -> None:
                self.handle = real_fdopen(fd, mode)

            def __enter__(self) -> HalfWriter:
                return self

            def __exit__(self, *exc: object) -> None:
                self.handle.close()

            def write(self, data: bytes) -> None:
                self.handle.write(data[: len(data) // 2])
                raise OSError("power cut")

        monkeypatch.setattr(files.os, "fdopen", HalfWriter)
    else:
        monkeypatch.setattr(files.os, crash_in, crash)
    with pytest.raises(OSError, match="power cut"):
        ck.save_checkpoint(tmp_path, _checkpoint(2))
    monkeypatch.undo()
    assert ck.load_checkpoint(tmp_path).round == 1
    assert sorted(os.listdir(tmp_path)) == [ck.CHECKPOINT_FILE]  # no temp file left behind


def test_a_damaged_checkpoint_is_a_clear_error(tmp_path: Path) -> None:
    ck.save_checkpoint(tmp_path, _checkpoint(1))
    path = tmp_path / ck.CHECKPOINT_FILE
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(ck.CheckpointError, match="not a readable fedlora checkpoint"):
        ck.load_checkpoint(tmp_path)


def test_settings_that_change_the_rounds_are_named_and_the_others_may_change() -> None:
    saved = _checkpoint(2)
    ck.check_compatible(
        saved,
        run_config={**DEFAULT_RUN_CONFIG, "num-server-rounds": 5, "round-timeout-s": 60.0,
                    "resume-from": "/x", "run-dir": "/y", "max-round-retries": 7},
        base_model=saved.base_model,
    )  # fmt: skip
    with pytest.raises(ck.CheckpointError) as err:
        ck.check_compatible(
            saved,
            run_config={**DEFAULT_RUN_CONFIG, "num-server-rounds": 5, "strategy": "fedit",
                        "seed": 3},
            base_model={"config.json sha256": "beef"},
        )  # fmt: skip
    message = str(err.value)
    assert "`strategy` is 'fedit'" in message and "`seed` is 3" in message
    assert "config.json sha256 is 'beef'" in message

"""Start a fresh run folder, or continue one from its checkpoint (``resume-from``).

What the ServerApp does in both ``fedlora simulate --resume RUN_DIR`` and a deployed run whose
run config sets ``resume-from``: load the checkpoint, refuse it if anything that changes what the
rounds compute differs (:func:`server.run.checkpoint.check_compatible`), hand the strategy its
state, and restore ``metrics.jsonl`` to the checkpointed rounds (the previous
file is kept beside it).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from flwr.app import ArrayRecord

from common.config import ConfigValue
from common.files import write_atomic
from server.run.checkpoint import (
    Checkpoint,
    check_compatible,
    load_checkpoint,
    save_checkpoint,
)
from server.run.runlog import METRICS_FILE, new_run_dir
from server.run.settings import ServerSettings
from strategies.flower.base import LoraStrategy

# Node sampling draws from random.Random(seed * 100003 + round + 7919 * attempt): no state to
# carry between rounds, so the seed and the round number restore it exactly.
SAMPLING_RNG = "random.Random(seed * 100003 + round + 7919 * attempt)"


@dataclass
class Resumable:
    """A run folder and where its rounds start; saves a checkpoint after each round."""

    run_dir: Path
    initial: ArrayRecord
    completed: int
    resumed: bool
    records: list[dict[str, Any]]
    run_config: dict[str, ConfigValue]
    base_model: dict[str, str]
    seed: int

    def save(
        self, strategy: LoraStrategy, server_round: int, records: Sequence[dict[str, Any]]
    ) -> Path:
        arrays, state = strategy.state_dict()
        checkpoint = Checkpoint(
            round=server_round,
            arrays=arrays,
            strategy_state=state,
            run_config=self.run_config,
            base_model=self.base_model,
            records=list(records),
            rng={"node-sampling": SAMPLING_RNG, "seed": self.seed},
        )
        return save_checkpoint(self.run_dir, checkpoint)


def start_or_resume(
    settings: ServerSettings, strategy: LoraStrategy, *, base_model: dict[str, str]
) -> Resumable:
    """A new run folder, or ``resume-from``'s folder with ``strategy`` restored from it."""
    config = dict(settings.run_config)
    seed = settings.train.seed
    if settings.resume_from is None:
        run_dir = new_run_dir(settings.run_dir)
        _write_settings(run_dir, settings)
        return Resumable(run_dir, ArrayRecord(), 0, False, [], config, base_model, seed)
    run_dir = settings.resume_from
    checkpoint = load_checkpoint(run_dir)
    check_compatible(checkpoint, run_config=config, base_model=base_model)
    initial = strategy.load_state_dict(
        checkpoint.arrays, checkpoint.strategy_state, completed_round=checkpoint.round
    )
    restore_metrics(run_dir, checkpoint.records)
    _write_settings(run_dir, settings)
    return Resumable(
        run_dir, initial, checkpoint.round, True, list(checkpoint.records), config, base_model,
        seed,
    )  # fmt: skip


def restore_metrics(run_dir: Path, records: Sequence[dict[str, Any]]) -> None:
    """``metrics.jsonl`` := the checkpoint's records; the old file is kept as
    ``metrics.before-resume-N.jsonl`` (it may hold a failed or half-recorded round)."""
    current = run_dir / METRICS_FILE
    if current.is_file():
        n = 1
        while (kept := run_dir / f"metrics.before-resume-{n}.jsonl").exists():
            n += 1
        current.rename(kept)
    lines = "".join(json.dumps(r, sort_keys=True) + "\n" for r in records)
    write_atomic(current, lines.encode())


def _write_settings(run_dir: Path, settings: ServerSettings) -> None:
    text = json.dumps(json.loads(json.dumps(asdict(settings), default=str)), indent=2)
    (run_dir / "settings.json").write_text(text)

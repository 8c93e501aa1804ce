"""Checkpoint and resume: after every completed round, the run's whole state in one file.

``RUN_DIR/checkpoint.safetensors`` holds the global adapter as tensors (float64, peft key names;
safetensors, never pickle) and, in the header's metadata, one JSON document: the round number,
the strategy's state, how node sampling is seeded, the run config, the base model's identity,
and the per-round records so far. It is written atomically (temp file in the same folder, fsync,
rename, fsync of the folder), so a crash mid-write leaves the previous checkpoint intact.

A run resumes with the run-config key ``resume-from`` = that folder (``fedlora simulate --resume
RUN_DIR`` sets it): the ServerApp loads the checkpoint, refuses it if the base model or any
setting that changes what the rounds compute differs, and continues from the next round.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from safetensors import safe_open
from safetensors.numpy import save

from common.config import DEFAULT_RUN_CONFIG, ConfigValue
from common.files import write_atomic

CHECKPOINT_FILE = "checkpoint.safetensors"
FORMAT = "fedlora-checkpoint/1"
# Settings that may differ on resume: they change how long or where a run goes, not what its
# rounds compute. Every other run-config key must equal the checkpoint's.
RESUMABLE_KEYS = frozenset(
    {"num-server-rounds", "resume-from", "run-dir", "node-wait-s", "round-timeout-s",
     "max-round-retries", "server-eval-data", "enrolled-nodes"}
)  # fmt: skip


class CheckpointError(ValueError):
    """A checkpoint that cannot be read, or that belongs to another base model or settings."""


@dataclass(frozen=True)
class Checkpoint:
    """Everything a run needs to continue after round ``round``."""

    round: int
    arrays: dict[str, NDArray[np.floating]]
    strategy_state: dict[str, Any]
    run_config: dict[str, ConfigValue]
    base_model: dict[str, str]
    records: list[dict[str, Any]]
    rng: dict[str, Any]


def save_checkpoint(run_dir: Path, checkpoint: Checkpoint) -> Path:
    """Atomically replace ``run_dir/checkpoint.safetensors`` with ``checkpoint``."""
    meta = {
        "format": FORMAT,
        "round": checkpoint.round,
        "strategy_state": checkpoint.strategy_state,
        "run_config": checkpoint.run_config,
        "base_model": checkpoint.base_model,
        "records": checkpoint.records,
        "rng": checkpoint.rng,
    }
    tensors = {k: np.ascontiguousarray(v) for k, v in checkpoint.arrays.items()}
    data = save(tensors, metadata={"fedlora": json.dumps(meta, sort_keys=True)})
    path = run_dir / CHECKPOINT_FILE
    write_atomic(path, data)
    return path


def load_checkpoint(run_dir: Path) -> Checkpoint:
    """Read ``run_dir/checkpoint.safetensors``; raise :class:`CheckpointError` naming the file."""
    path = run_dir / CHECKPOINT_FILE
    try:
        with safe_open(str(path), framework="np") as handle:
            meta = json.loads((handle.metadata() or {})["fedlora"])
            arrays = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
    except Exception as err:  # safetensors, JSON and key errors alike: the file is not usable
        raise CheckpointError(
            f"`resume-from`: {path} is not a readable fedlora checkpoint ({type(err).__name__}: "
            f"{err}); give the folder of a run that completed at least one round"
        ) from None
    if meta.get("format") != FORMAT:
        raise CheckpointError(
            f"`resume-from`: {path} has format {meta.get('format')!r}, this fedlora reads "
            f"{FORMAT!r}: resume with the fedlora version that wrote it"
        )
    return Checkpoint(
        round=int(meta["round"]),
        arrays=arrays,
        strategy_state=meta["strategy_state"],
        run_config=meta["run_config"],
        base_model=meta["base_model"],
        records=meta["records"],
        rng=meta["rng"],
    )


def check_compatible(
    checkpoint: Checkpoint,
    *,
    run_config: Mapping[str, ConfigValue],
    base_model: Mapping[str, str],
) -> None:
    """Raise :class:`CheckpointError` naming every difference that makes resuming wrong."""
    problems = []
    for key in sorted(set(DEFAULT_RUN_CONFIG) - RESUMABLE_KEYS):
        saved = checkpoint.run_config.get(key, DEFAULT_RUN_CONFIG[key])
        now = run_config.get(key, DEFAULT_RUN_CONFIG[key])
        if saved != now:
            problems.append(f"`{key}` is {now!r} but the checkpoint was made with {saved!r}")
    for key in sorted(set(base_model) | set(checkpoint.base_model)):
        saved_id, now_id = checkpoint.base_model.get(key), base_model.get(key)
        if saved_id != now_id:
            problems.append(
                f"the base model's {key} is {now_id!r} but the checkpoint's is {saved_id!r}"
            )
    rounds = run_config.get("num-server-rounds", DEFAULT_RUN_CONFIG["num-server-rounds"])
    if isinstance(rounds, int | float) and rounds <= checkpoint.round:
        problems.append(
            f"`num-server-rounds` is {rounds} but the checkpoint has completed "
            f"{checkpoint.round} rounds: raise it to run more"
        )
    if problems:
        raise CheckpointError(
            "cannot resume from this checkpoint: " + "; ".join(problems)
            + " (resume with the checkpoint's settings, or start a new run)"
        )  # fmt: skip


def base_model_identity(base_model: str) -> dict[str, str]:
    """What identifies a model folder beyond its name (``base-model``, compared with the settings).

    Hashes ``config.json`` and lists weight files with their sizes (cheap even for large models);
    a hub id has nothing more than its name.
    """
    from client.model.loading import resolve_model_path

    path = Path(resolve_model_path(base_model))
    identity: dict[str, str] = {}
    if path.is_dir():
        config = path / "config.json"
        if config.is_file():
            identity["config.json sha256"] = hashlib.sha256(config.read_bytes()).hexdigest()[:16]
        weights = sorted(path.glob("*.safetensors")) + sorted(path.glob("*.bin"))
        identity["weight files"] = ", ".join(f"{w.name} ({w.stat().st_size} B)" for w in weights)
    return identity


def saved_run_config(run_config: Mapping[str, ConfigValue]) -> dict[str, ConfigValue]:
    """With ``resume-from`` set, the checkpoint's run config (what a resumed run starts from;
    explicit settings go on top); else nothing."""
    resume = run_config.get("resume-from")
    if not resume:
        return {}
    saved = load_checkpoint(Path(str(resume)).expanduser()).run_config
    return {k: v for k, v in saved.items() if k in DEFAULT_RUN_CONFIG and k != "resume-from"}

"""Seeded synthetic non-IID institutional text: the default data of the demo.

Each simulated institution (partition) gets one of three profiles with its own vocabulary and
record structure: cardiology ward notes, pediatric clinic notes and bank transaction memos.
Records are short plain-ASCII strings built from many templates with randomised fields, so
the text varies but has a structure a small model can learn. Everything is deterministic for
a given seed and uses only local ``random.Random`` instances. Torch-free, stdlib only.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from client.data.synth import banking, cardiology, pediatrics
from client.data.synth.institutions import (
    SCARCE_NAMES,
    SCARCE_TRAIN,
    institution,
    institution_records,
)
from client.data.synth.template import Template

PROFILES: tuple[str, ...] = ("hospital-cardiology", "hospital-pediatrics", "bank-transactions")
MIN_CHARS = 60
MAX_CHARS = 250
TRAIN_FILE = "train.jsonl"
EVAL_FILE = "eval.jsonl"
_MAX_ATTEMPTS = 1000

_TEMPLATES: dict[str, tuple[Template, ...]] = {
    "hospital-cardiology": cardiology.TEMPLATES,
    "hospital-pediatrics": pediatrics.TEMPLATES,
    "bank-transactions": banking.TEMPLATES,
}


# --- public API ---------------------------------------------------------------------------------


def profile_for_partition(partition_id: int) -> str:
    """Return the institution profile of a partition.

    Parameters
    ----------
    partition_id : int
        Index of the simulated institution (node partition).

    Returns
    -------
    str
        ``PROFILES[partition_id % len(PROFILES)]``.
    """
    return PROFILES[partition_id % len(PROFILES)]


def _one_record(templates: tuple[Template, ...], rng: random.Random) -> str:
    for _ in range(_MAX_ATTEMPTS):
        text = rng.choice(templates)(rng)
        if MIN_CHARS <= len(text) <= MAX_CHARS:
            return text
    raise RuntimeError(f"no record of {MIN_CHARS}-{MAX_CHARS} characters after {_MAX_ATTEMPTS}")


def synth_records(profile: str, *, n: int, seed: int) -> list[dict[str, str]]:
    """Generate ``n`` synthetic records of one institution profile.

    Parameters
    ----------
    profile : str
        One of ``PROFILES``.
    n : int
        Number of records, ``>= 0``.
    seed : int
        Seed of the local random generator; the first ``k`` records do not depend on ``n``.

    Returns
    -------
    list of dict
        ``n`` records ``{"text": ...}``, each plain ASCII of 60-250 characters.

    Raises
    ------
    ValueError
        If ``profile`` is unknown or ``n`` is negative.
    """
    if profile not in _TEMPLATES:
        raise ValueError(f"unknown profile {profile!r}: use one of {', '.join(PROFILES)}")
    if n < 0:
        raise ValueError(f"n is {n}: use an integer >= 0")
    rng = random.Random(f"fedlora-synth|{profile}|{seed}")
    templates = _TEMPLATES[profile]
    return [{"text": _one_record(templates, rng)} for _ in range(n)]


def _derived_seed(seed: int, partition_id: int, split: str) -> int:
    return random.Random(f"fedlora-split|{seed}|{partition_id}|{split}").getrandbits(63)


def synth_partition(
    partition_id: int, *, n_train: int = 256, n_eval: int = 64, seed: int = 0
) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """Generate the train and eval records of one simulated institution.

    Parameters
    ----------
    partition_id : int
        Index of the institution; its profile is ``profile_for_partition(partition_id)``.
    n_train : int, default 256
        Number of training records.
    n_eval : int, default 64
        Number of evaluation records.
    seed : int, default 0
        Run seed; train and eval, and every partition, use different seeds derived from it.

    Returns
    -------
    tuple of (list of dict, list of dict)
        The ``(train, eval)`` records, each ``{"text": ...}``.

    Raises
    ------
    ValueError
        If ``n_train`` or ``n_eval`` is negative.
    """
    profile = profile_for_partition(partition_id)
    train = synth_records(profile, n=n_train, seed=_derived_seed(seed, partition_id, "train"))
    evaluation = synth_records(profile, n=n_eval, seed=_derived_seed(seed, partition_id, "eval"))
    return train, evaluation


def _write_jsonl(path: Path, records: list[dict[str, str]]) -> None:
    lines = (json.dumps(record, ensure_ascii=False) + "\n" for record in records)
    path.write_text("".join(lines), encoding="utf-8")


def write_partition(
    out_dir: Path, partition_id: int, *, n_train: int = 256, n_eval: int = 64, seed: int = 0
) -> Path:
    """Write a partition's records as ``train.jsonl`` and ``eval.jsonl`` under ``out_dir``.

    Parameters
    ----------
    out_dir : pathlib.Path
        Folder to write into; created if missing.
    partition_id : int
        Index of the institution.
    n_train : int, default 256
        Number of training records.
    n_eval : int, default 64
        Number of evaluation records.
    seed : int, default 0
        Run seed, as in ``synth_partition``.

    Returns
    -------
    pathlib.Path
        ``out_dir``.
    """
    train, evaluation = synth_partition(partition_id, n_train=n_train, n_eval=n_eval, seed=seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    _write_jsonl(out_dir / TRAIN_FILE, train)
    _write_jsonl(out_dir / EVAL_FILE, evaluation)
    return out_dir


# --- settings: the default three domains, or the scarce six institutions -------------------------

SETTINGS: tuple[str, ...] = ("domains", "scarce")


def synth_institution(
    name: str, *, n_train: int = 48, n_eval: int = 64, seed: int = 0
) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """Generate the train and eval records of one institution of the ``scarce`` setting.

    Parameters
    ----------
    name : str
        One of ``SCARCE_NAMES`` (client/data/synth/institutions.py).
    n_train : int, default 48
        Number of training records.
    n_eval : int, default 64
        Number of evaluation records.
    seed : int, default 0
        Run seed; each institution and split draws from its own generator.

    Returns
    -------
    tuple of (list of dict, list of dict)
        The ``(train, eval)`` records, each ``{"text": ...}`` of 60-250 ASCII characters.

    Raises
    ------
    ValueError
        If ``name`` is unknown or a count is negative.
    """
    inst = institution(name)
    bounds = {"min_chars": MIN_CHARS, "max_chars": MAX_CHARS}
    train = institution_records(inst, n=n_train, seed=seed, split="train", **bounds)
    evaluation = institution_records(inst, n=n_eval, seed=seed, split="eval", **bounds)
    return train, evaluation


def write_setting(
    out_dir: Path,
    setting: str,
    *,
    partitions: int = 3,
    n_train: int | None = None,
    n_eval: int = 64,
    seed: int = 0,
) -> list[Path]:
    """Write one folder of ``train.jsonl``/``eval.jsonl`` per institution of a setting.

    Parameters
    ----------
    out_dir : pathlib.Path
        Parent folder; one sub-folder per institution, named after it.
    setting : str
        ``domains``: ``partitions`` institutions cycling over the three domains (256 training
        records each by default); ``scarce``: the six institutions of ``SCARCE_NAMES`` (48
        training records each by default; ``partitions`` is ignored).
    partitions : int, default 3
        Number of institutions in the ``domains`` setting.
    n_train : int or None, default None
        Training records per institution; None: the setting's default.
    n_eval : int, default 64
        Evaluation records per institution.
    seed : int, default 0
        Run seed.

    Returns
    -------
    list of pathlib.Path
        The institutions' folders, in order.

    Raises
    ------
    ValueError
        If ``setting`` is unknown or a count is negative.
    """
    if setting == "scarce":
        folders = []
        for name in SCARCE_NAMES:
            train, evaluation = synth_institution(
                name, n_train=SCARCE_TRAIN if n_train is None else n_train, n_eval=n_eval,
                seed=seed,
            )  # fmt: skip
            folder = out_dir / name
            folder.mkdir(parents=True, exist_ok=True)
            _write_jsonl(folder / TRAIN_FILE, train)
            _write_jsonl(folder / EVAL_FILE, evaluation)
            folders.append(folder)
        return folders
    if setting != "domains":
        raise ValueError(f"`--setting` is {setting!r}: use one of {', '.join(SETTINGS)}")
    count = 256 if n_train is None else n_train
    names = [PROFILES[i] if i < len(PROFILES) else f"{PROFILES[i % 3]}-{i // 3}"
             for i in range(partitions)]  # fmt: skip
    return [
        write_partition(out_dir / name, pid, n_train=count, n_eval=n_eval, seed=seed)
        for pid, name in enumerate(names)
    ]

"""``fedlora data synth --nodes N``: N institutions cycling the three domains, each its own.

Institution ``i`` (0-based) belongs to domain ``i mod 3`` — cardiology, pediatrics, banking — and
is named ``cardiology-1``, ``pediatrics-2``, ``banking-3``, ``cardiology-4``, ... (unique, and
valid node names). Like the ``scarce`` institutions (client/data/synth/institutions.py), each
has its own

- *case mix*: its domain's template weights drawn from Gamma(0.5, 1) — a Dirichlet(0.5) mix —
  by a generator seeded with ``i``, so most institutions write mostly a few kinds of record;
- *writing style*: style ``(i // 3) mod 3`` of its domain (plain; abbreviations spelled out, or
  the bank's lower case with pipes; everything lower case), so neighbours in a domain differ;
- *records*: seeded by (its name, the split, the run seed).

The case mix and the style depend on ``i`` only: ``cardiology-4`` is the same institution under
every ``--seed`` and every ``N``; the seed draws its records. Torch-free, stdlib only.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

from client.data.synth import (
    EVAL_FILE,
    MAX_CHARS,
    MIN_CHARS,
    PROFILES,
    TRAIN_FILE,
    banking,
    cardiology,
    pediatrics,
)
from client.data.synth.institutions import DOMAIN_STYLES, Institution, institution_records

DOMAINS: tuple[str, ...] = ("cardiology", "pediatrics", "banking")  # PROFILES, in order
_TEMPLATES = {
    "hospital-cardiology": cardiology.TEMPLATES,
    "hospital-pediatrics": pediatrics.TEMPLATES,
    "bank-transactions": banking.TEMPLATES,
}
DEFAULT_TRAIN = 256
DEFAULT_EVAL = 64
# Weights below this are raised to it: every kind of record stays possible.
MIN_WEIGHT = 1e-3


def many_institution(index: int) -> Institution:
    """Institution ``index`` (0-based) of the ``--nodes`` roster.

    Parameters
    ----------
    index : int
        Position in the roster, ``>= 0``; its domain is ``index mod 3``.

    Returns
    -------
    Institution
        Named ``<domain>-<index + 1>``, with its own case mix and writing style.

    Raises
    ------
    ValueError
        If ``index`` is negative.
    """
    if index < 0:
        raise ValueError(f"institution index is {index}: use an integer >= 0")
    profile = PROFILES[index % len(PROFILES)]
    templates = _TEMPLATES[profile]
    rng = random.Random(f"fedlora-many|{index}")
    weights = tuple(max(rng.gammavariate(0.5, 1.0), MIN_WEIGHT) for _ in templates)
    styles = DOMAIN_STYLES[profile]
    style = styles[(index // len(PROFILES)) % len(styles)]
    name = f"{DOMAINS[index % len(DOMAINS)]}-{index + 1}"
    return Institution(name, profile, templates, weights, style)


def write_institutions(
    out_dir: Path,
    count: int,
    *,
    n_train: int | None = None,
    n_eval: int = DEFAULT_EVAL,
    seed: int = 0,
) -> list[Path]:
    """Write ``count`` institutions, one folder of ``train.jsonl``/``eval.jsonl`` each.

    Parameters
    ----------
    out_dir : pathlib.Path
        Parent folder; one sub-folder per institution, named after it.
    count : int
        Number of institutions, ``>= 1``.
    n_train : int or None, default None
        Training records per institution; None: 256.
    n_eval : int, default 64
        Evaluation records per institution.
    seed : int, default 0
        Run seed: draws the records (not the case mixes or styles).

    Returns
    -------
    list of pathlib.Path
        The institutions' folders, in roster order.

    Raises
    ------
    ValueError
        If ``count`` is below 1 or a record count is negative, naming the option.
    """
    problems = []
    if count < 1:
        problems.append(f"`--nodes` is {count}: use an integer >= 1")
    train = DEFAULT_TRAIN if n_train is None else n_train
    for option, value in (("--train", train), ("--eval", n_eval)):
        if value < 0:
            problems.append(f"`{option}` is {value}: use an integer >= 0")
    if problems:
        raise ValueError("; ".join(problems))
    bounds = {"min_chars": MIN_CHARS, "max_chars": MAX_CHARS}
    folders = []
    for index in range(count):
        inst = many_institution(index)
        folder = out_dir / inst.name
        folder.mkdir(parents=True, exist_ok=True)
        for split, n, file in (("train", train, TRAIN_FILE), ("eval", n_eval, EVAL_FILE)):
            records = institution_records(inst, n=n, seed=seed, split=split, **bounds)
            lines = (json.dumps(record) + "\n" for record in records)
            (folder / file).write_text("".join(lines), encoding="utf-8")
        folders.append(folder)
    return folders


def roster_summary(folders: list[Path]) -> str:
    """``"34 cardiology, 33 pediatrics, 33 banking"`` for folders named as the roster names."""
    counts = Counter(folder.name.rsplit("-", 1)[0] for folder in folders)
    return ", ".join(f"{counts[d]} {d}" for d in DOMAINS if counts[d])

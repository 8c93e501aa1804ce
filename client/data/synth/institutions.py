"""The ``scarce`` federation: six institutions, two per domain, each with little data.

Two cardiology wards, two pediatric clinics and two banks. The two partners of a domain draw from
that domain's templates (client/data/synth/{cardiology,pediatrics,banking}.py) but with their own
*case mix* (how often each kind of record occurs) and their own *writing style* (abbreviations
spelled out or kept, separators, case). So partners share most of their vocabulary and record
structure, while the three domains share almost none:

=====================================  =========================================================
pair                                   share of one's word tokens whose word the other uses
=====================================  =========================================================
partners of one domain                 >= 0.55 (measured 0.60-0.93)
cardiology <-> pediatrics              <= 0.35 (measured 0.06-0.33: mg, kg, given, ...)
either clinic <-> a bank               <= 0.15 (measured <= 0.12: almost disjoint)
=====================================  =========================================================

Measured on the 48 training records of each institution, seeds 0-19;
``tests/unit/test_synth_scarce.py`` keeps these bounds. Records are seeded per institution and
split; the first ``k`` records of a split do not depend on how many are drawn.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from dataclasses import dataclass

from client.data.synth import banking, cardiology, pediatrics
from client.data.synth.template import Template

Style = Callable[[str], str]

SCARCE_TRAIN = 48
SCARCE_EVAL = 64


def _plain(text: str) -> str:
    return text


def _replacing(*pairs: tuple[str, str], lower: bool = False) -> Style:
    """A style that applies regular-expression substitutions in order, then lower-cases."""
    compiled = [(re.compile(old), new) for old, new in pairs]

    def style(text: str) -> str:
        for pattern, new in compiled:
            text = pattern.sub(new, text)
        return text.lower() if lower else text

    return style


_SPELLED_OUT_CARDIO = _replacing(
    (r"\bPt ", "Patient "),
    (r" \| ", "; "),
    (r"\bDx:", "Diagnosis:"),
    (r"\bc/o\b", "complaining of"),
    (r"\bF/u\b", "Follow-up with"),
    (r"\bTrop ", "Troponin "),
    (r"\bED triage", "Emergency triage"),
    (r"\bBID\b", "twice daily"),
)
_SPELLED_OUT_PEDS = _replacing(
    (r"\bDx ", "Diagnosis: "),
    (r"\bRx ", "Treatment: "),
    (r" w/ ", " with "),
    (r"\bPeds ED", "Urgent care"),
    (r"(\d) mo\b", r"\1 months"),
    (r"(\d) yo\b", r"\1 years"),
    (r"%ile\b", " percentile"),
)
_LOWER_PIPES_BANK = _replacing((r";", " |"), (r"\*{4}", "xx"), lower=True)
_LOWER = _replacing(lower=True)

# The writing styles of each domain, for the many-institution roster (client/data/synth/many.py).
DOMAIN_STYLES: dict[str, tuple[Style, ...]] = {
    "hospital-cardiology": (_plain, _SPELLED_OUT_CARDIO, _LOWER),
    "hospital-pediatrics": (_plain, _SPELLED_OUT_PEDS, _LOWER),
    "bank-transactions": (_plain, _LOWER_PIPES_BANK, _LOWER),
}


@dataclass(frozen=True)
class Institution:
    """One synthetic institution: its domain's templates, its case mix and its writing style."""

    name: str
    profile: str  # the domain, one of client.data.synth.PROFILES
    templates: tuple[Template, ...]
    weights: tuple[float, ...]  # case mix: relative frequency of each template
    style: Style


SCARCE: tuple[Institution, ...] = (
    # cardiology: admission, board, echo, cath, progress, triage, discharge
    Institution("cardiology-north", "hospital-cardiology", cardiology.TEMPLATES,
                (3, 1, 1, 3, 2, 2, 1), _plain),
    Institution("cardiology-south", "hospital-cardiology", cardiology.TEMPLATES,
                (1, 2, 3, 0.5, 1, 2, 3), _SPELLED_OUT_CARDIO),
    # pediatrics: well-child, sick visit, parent report, immunization, growth, ED
    Institution("pediatrics-east", "hospital-pediatrics", pediatrics.TEMPLATES,
                (3, 1, 1, 3, 2, 0.5), _plain),
    Institution("pediatrics-west", "hospital-pediatrics", pediatrics.TEMPLATES,
                (0.5, 3, 2, 1, 0.5, 3), _SPELLED_OUT_PEDS),
    # banking: card, card, payroll, wire, ATM, refund, direct debit, alert, FX
    Institution("bank-retail", "bank-transactions", banking.TEMPLATES,
                (2, 2, 2, 0.5, 2, 1, 2, 1, 0.5), _plain),
    Institution("bank-corporate", "bank-transactions", banking.TEMPLATES,
                (1, 0, 1, 3, 0.5, 1, 1, 2, 3), _LOWER_PIPES_BANK),
)  # fmt: skip
SCARCE_NAMES: tuple[str, ...] = tuple(i.name for i in SCARCE)


def institution(name: str) -> Institution:
    """The scarce-setting institution called ``name``; raise ``ValueError`` naming the choices."""
    for inst in SCARCE:
        if inst.name == name:
            return inst
    raise ValueError(f"unknown institution {name!r}: use one of {', '.join(SCARCE_NAMES)}")


def institution_records(
    inst: Institution, *, n: int, seed: int, split: str, min_chars: int, max_chars: int
) -> list[dict[str, str]]:
    """``n`` records of one institution's ``split``, seeded by (institution, split, seed)."""
    if n < 0:
        raise ValueError(f"n is {n}: use an integer >= 0")
    rng = random.Random(f"fedlora-scarce|{inst.name}|{split}|{seed}")
    records = []
    for _ in range(n):
        for _attempt in range(1000):
            template = rng.choices(inst.templates, weights=inst.weights)[0]
            text = inst.style(template(rng))
            if min_chars <= len(text) <= max_chars:
                break
        else:  # pragma: no cover - every style keeps most records within bounds
            raise RuntimeError(f"{inst.name}: no record of {min_chars}-{max_chars} characters")
        records.append({"text": text})
    return records


def word_share(first: list[str], second: list[str]) -> float:
    """Share of ``first``'s word tokens (letters only, lower case) whose word ``second`` uses."""
    tokens = [w for text in first for w in re.findall(r"[a-z]+", text.lower())]
    vocab = {w for text in second for w in re.findall(r"[a-z]+", text.lower())}
    return sum(w in vocab for w in tokens) / len(tokens) if tokens else 0.0

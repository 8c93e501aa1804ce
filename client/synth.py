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
from collections.abc import Callable
from pathlib import Path

PROFILES: tuple[str, ...] = ("hospital-cardiology", "hospital-pediatrics", "bank-transactions")
MIN_CHARS = 60
MAX_CHARS = 250
TRAIN_FILE = "train.jsonl"
EVAL_FILE = "eval.jsonl"
_MAX_ATTEMPTS = 1000

Template = Callable[[random.Random], str]


# --- hospital-cardiology ------------------------------------------------------------------------

_CARDIO_COMPLAINTS = (
    "chest pain",
    "substernal chest pressure",
    "exertional dyspnea",
    "palpitations",
    "syncope",
    "presyncope",
    "orthopnea and leg edema",
    "jaw pain radiating to L arm",
)
_CARDIO_ONSETS = ("x2h", "x6h", "since this morning", "for 3 days", "overnight", "at rest")
_CARDIO_ECG = (
    "ST elevation II, III, aVF",
    "ST depression V4-V6",
    "new LBBB",
    "AF with RVR",
    "sinus tachycardia",
    "NSR, no acute changes",
    "T-wave inversion V1-V3",
    "1st degree AV block",
    "anterior Q waves",
)
_CARDIO_DRUGS = (
    "aspirin 81 mg",
    "aspirin 325 mg load",
    "clopidogrel 75 mg",
    "ticagrelor 90 mg BID",
    "atorvastatin 80 mg",
    "metoprolol 25 mg BID",
    "heparin drip",
    "furosemide 40 mg IV",
    "lisinopril 10 mg",
    "apixaban 5 mg BID",
    "nitroglycerin 0.4 mg SL",
    "amiodarone 150 mg IV",
    "carvedilol 6.25 mg BID",
)
_CARDIO_HOME_MEDS = (
    "aspirin 81 mg",
    "clopidogrel 75 mg",
    "atorvastatin 80 mg",
    "metoprolol succinate 50 mg",
    "lisinopril 10 mg",
    "apixaban 5 mg BID",
    "furosemide 40 mg PO",
    "spironolactone 25 mg",
)
_CARDIO_DX = ("NSTEMI", "STEMI", "unstable angina", "ADHF", "new-onset AF", "CHF exacerbation")
_CARDIO_VESSELS = ("LAD", "proximal LAD", "LCx", "RCA", "OM1", "D1", "left main")
_CARDIO_INTERVENTIONS = ("DES x1", "DES x2", "POBA", "referred for CABG", "medical mgmt")
_CARDIO_ECHO = (
    "mild MR",
    "moderate AS",
    "anterior wall hypokinesis",
    "global hypokinesis",
    "no pericardial effusion",
    "LVH, grade 1 diastolic dysfunction",
)
_CARDIO_CXR = ("pulmonary edema", "cardiomegaly", "small bilateral effusions", "clear lungs")
_CARDIO_PLAN = (
    "tele, serial trop q6h",
    "cath in AM",
    "uptitrate beta blocker",
    "cardiac rehab referral",
    "diurese to dry weight",
    "rate control, anticoag",
)


def _cardio_patient(rng: random.Random) -> str:
    return f"{rng.randint(38, 92)}{rng.choice('MF')}"


def _troponin(rng: random.Random) -> str:
    return f"{rng.uniform(0.01, 2.5):.2f}"


def _cardio_admission(rng: random.Random) -> str:
    drug_a, drug_b = rng.sample(_CARDIO_DRUGS, 2)
    return (
        f"Pt {_cardio_patient(rng)} admitted with {rng.choice(_CARDIO_COMPLAINTS)} "
        f"{rng.choice(_CARDIO_ONSETS)}. Troponin {_troponin(rng)} ng/mL, ECG: "
        f"{rng.choice(_CARDIO_ECG)}. Started on {drug_a} and {drug_b}."
    )


def _cardio_board(rng: random.Random) -> str:
    return (
        f"Bed {rng.randint(1, 32)} | {_cardio_patient(rng)} | Dx: {rng.choice(_CARDIO_DX)} | "
        f"BP {rng.randint(90, 185)}/{rng.randint(50, 110)} HR {rng.randint(48, 148)} | "
        f"Plan: {rng.choice(_CARDIO_PLAN)}"
    )


def _cardio_echo(rng: random.Random) -> str:
    return (
        f"Echo {_cardio_patient(rng)}: LVEF {rng.randrange(20, 70, 5)}%, "
        f"{rng.choice(_CARDIO_ECHO)}. Continue {rng.choice(_CARDIO_DRUGS)}, "
        f"repeat echo in {rng.choice((3, 6, 12))} months."
    )


def _cardio_cath(rng: random.Random) -> str:
    return (
        f"Cath lab: {_cardio_patient(rng)} with {rng.choice(_CARDIO_DX)}, "
        f"{rng.choice(_CARDIO_VESSELS)} {rng.randrange(50, 100, 5)}% stenosis, "
        f"{rng.choice(_CARDIO_INTERVENTIONS)}. Post-procedure {rng.choice(_CARDIO_DRUGS)}."
    )


def _cardio_progress(rng: random.Random) -> str:
    first, second = _troponin(rng), _troponin(rng)
    return (
        f"Day {rng.randint(1, 6)} post-MI, {_cardio_patient(rng)}. Trop {first} -> {second} "
        f"ng/mL. K {rng.uniform(3.2, 5.4):.1f} mmol/L, Cr {rng.uniform(0.6, 2.4):.1f} mg/dL. "
        f"Continue {rng.choice(_CARDIO_DRUGS)}."
    )


def _cardio_triage(rng: random.Random) -> str:
    return (
        f"ED triage: {_cardio_patient(rng)} c/o {rng.choice(_CARDIO_COMPLAINTS)}, SpO2 "
        f"{rng.randint(86, 99)}% RA, BNP {rng.randint(40, 2400)} pg/mL. CXR: "
        f"{rng.choice(_CARDIO_CXR)}. Given {rng.choice(_CARDIO_DRUGS)}."
    )


def _cardio_discharge(rng: random.Random) -> str:
    meds = ", ".join(rng.sample(_CARDIO_HOME_MEDS, 3))
    return (
        f"Discharge {_cardio_patient(rng)} after {rng.choice(_CARDIO_DX)}. Meds: {meds}. "
        f"F/u cardiology in {rng.choice(('1 wk', '2 wks', '4 wks', '3 months'))}."
    )


_CARDIOLOGY: tuple[Template, ...] = (
    _cardio_admission,
    _cardio_board,
    _cardio_echo,
    _cardio_cath,
    _cardio_progress,
    _cardio_triage,
    _cardio_discharge,
)


# --- hospital-pediatrics ------------------------------------------------------------------------

_PEDS_CHILD = ("boy", "girl")
_PEDS_PARENT = ("Mom", "Dad", "Grandmother", "Parents")
_PEDS_VACCINES = (
    "DTaP",
    "IPV",
    "Hib",
    "PCV13",
    "HepB",
    "MMR",
    "varicella",
    "rotavirus",
    "influenza",
    "HepA",
)
_PEDS_CONDITIONS: tuple[tuple[str, str, str, str], ...] = (
    ("fever and ear tugging", "bulging R TM", "acute otitis media", "amoxicillin 90 mg/kg/day"),
    ("fever and ear pain", "bulging L TM", "acute otitis media", "amoxicillin 90 mg/kg/day"),
    ("barky cough", "inspiratory stridor", "croup", "dexamethasone 0.6 mg/kg once"),
    ("runny nose and cough", "clear TMs, mild rhinorrhea", "viral URI", "nasal saline, fluids"),
    ("vomiting and diarrhea", "mildly dry mucosa", "gastroenteritis", "ORS, small sips"),
    ("sore throat, fever", "tonsillar exudate, strep +", "strep pharyngitis", "amoxicillin x10d"),
    ("itchy rash", "dry patches on flexures", "eczema flare", "hydrocortisone 1% cream BID"),
    ("wheezing, fast breathing", "diffuse wheeze", "bronchiolitis", "suction, supportive care"),
    ("fever, mouth sores", "vesicles on palms/soles", "hand-foot-mouth", "ibuprofen 10 mg/kg prn"),
)
_PEDS_EAR_FINDINGS = ("bulging R TM", "bulging L TM", "clear TMs", "dull R TM with effusion")
_PEDS_ANTIPYRETICS = ("acetaminophen 15 mg/kg", "ibuprofen 10 mg/kg")
_PEDS_INFANT_MILESTONES = (
    "rolls over",
    "sits unsupported",
    "pulls to stand",
    "walks independently",
    "babbles",
    "2-word phrases",
    "stacks 4 blocks",
    "social smile",
)
_PEDS_CHILD_MILESTONES = (
    "reads well",
    "rides a bike",
    "school going well",
    "hops on one foot",
    "full sentences",
    "sports 3x/week",
)
_PEDS_FEEDING = (
    "breastfed on demand",
    "formula 6 oz q3h",
    "eating table foods",
    "picky eater, drinks milk",
    "introduced purees",
)


def _peds_age(rng: random.Random) -> tuple[str, bool]:
    if rng.random() < 0.5:
        return f"{rng.randint(1, 23)} mo", True
    return f"{rng.randint(2, 15)} yo", False


def _peds_weight(rng: random.Random, infant: bool) -> str:
    return f"{rng.uniform(3.5, 13.0) if infant else rng.uniform(11.0, 55.0):.1f}"


def _percentile(rng: random.Random) -> str:
    return rng.choice(("3rd", "5th", "10th", "25th", "50th", "75th", "90th", "95th", "97th"))


def _fever(rng: random.Random) -> str:
    return f"{rng.uniform(37.8, 40.4):.1f}"


def _peds_well_child(rng: random.Random) -> str:
    age, infant = _peds_age(rng)
    vaccine_a, vaccine_b = rng.sample(_PEDS_VACCINES, 2)
    milestones = _PEDS_INFANT_MILESTONES if infant else _PEDS_CHILD_MILESTONES
    return (
        f"Well-child {age}: wt {_peds_weight(rng, infant)} kg ({_percentile(rng)} %ile), "
        f"ht {_percentile(rng)} %ile. Vaccines given: {vaccine_a}, {vaccine_b}. "
        f"Milestones: {rng.choice(milestones)}."
    )


def _peds_sick_visit(rng: random.Random) -> str:
    age, _ = _peds_age(rng)
    symptom, finding, diagnosis, treatment = rng.choice(_PEDS_CONDITIONS)
    return (
        f"Sick visit, {age} {rng.choice(_PEDS_CHILD)}: {symptom}, temp {_fever(rng)} C. "
        f"Exam: {finding}. Dx {diagnosis}. Rx {treatment}."
    )


def _peds_parent_report(rng: random.Random) -> str:
    age, infant = _peds_age(rng)
    symptom = rng.choice(_PEDS_CONDITIONS)[0]
    output = f"{rng.randint(2, 8)} wet diapers/day" if infant else "voiding normally"
    return (
        f"{rng.choice(_PEDS_PARENT)} reports {symptom} for {rng.randint(1, 5)} days in {age} "
        f"{rng.choice(_PEDS_CHILD)}. Hydration {rng.choice(('good', 'fair', 'poor'))}, {output}."
    )


def _peds_immunization(rng: random.Random) -> str:
    age, _ = _peds_age(rng)
    given = ", ".join(f"{v} #{rng.randint(1, 4)}" for v in rng.sample(_PEDS_VACCINES, 3))
    return (
        f"Immunizations at {age}: {given} administered. Next vaccines due at "
        f"{rng.choice(('2 mo', '4 mo', '6 mo', '12 mo', '18 mo', '4 yr'))}. No reaction."
    )


def _peds_growth(rng: random.Random) -> str:
    age, infant = _peds_age(rng)
    return (
        f"Growth check {age} {rng.choice(_PEDS_CHILD)}: weight {_peds_weight(rng, infant)} kg, "
        f"{_percentile(rng)} percentile, BMI {rng.uniform(13.0, 24.0):.1f}; "
        f"{rng.choice(_PEDS_FEEDING)}."
    )


def _peds_ed(rng: random.Random) -> str:
    age, _ = _peds_age(rng)
    return (
        f"Peds ED: {age} {rng.choice(_PEDS_CHILD)} w/ fever {_fever(rng)} C x"
        f"{rng.randint(1, 4)}d; otoscopy {rng.choice(_PEDS_EAR_FINDINGS)}; "
        f"given {rng.choice(_PEDS_ANTIPYRETICS)}. Return if fever > 3 days."
    )


_PEDIATRICS: tuple[Template, ...] = (
    _peds_well_child,
    _peds_sick_visit,
    _peds_parent_report,
    _peds_immunization,
    _peds_growth,
    _peds_ed,
)


# --- bank-transactions --------------------------------------------------------------------------

_BANK_CURRENCIES = ("EUR", "USD", "GBP", "CHF")
_BANK_MERCHANTS = (
    "GROCERY-MART",
    "FUELSTOP",
    "CITY-TRANSIT",
    "BOOKNOOK",
    "CAFE-LUNA",
    "ELECTRO-HUB",
    "HOMEWARE-DEPOT",
    "STREAMFLIX",
    "AIRLINK",
    "PIZZA-PRONTO",
    "SPORTS-CORNER",
)
_BANK_CARD_TYPES = ("POS DEBIT", "CNP DEBIT", "CONTACTLESS", "RECURRING")
_BANK_EMPLOYERS = ("ACME LOGISTICS", "NORTHWIND LTD", "BLUE RIVER GMBH", "CITY COUNCIL")
_BANK_UTILITIES = ("POWERGRID ENERGY", "AQUA WATER CO", "TELCO MOBILE", "FIBERNET", "GAS-PLUS")
_BANK_CITIES = ("LYON", "MADRID", "BERLIN", "LONDON", "ZURICH", "MILAN", "PORTO")
_BANK_COUNTRIES = ("DE", "FR", "ES", "IT", "NL", "GB", "CH", "PT")
_BANK_STATUS = ("settled", "pending", "reversed", "on hold")


def _date(rng: random.Random) -> str:
    return f"2026-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"


def _amount(rng: random.Random, high: float = 400.0, low: float = 1.0) -> str:
    return f"{rng.uniform(low, high):.2f}"


def _flag(rng: random.Random) -> str:
    return "yes" if rng.random() < 0.12 else "no"


def _card_payment(rng: random.Random) -> str:
    return (
        f"TXN {_date(rng)} {rng.choice(_BANK_CARD_TYPES)} {_amount(rng)} "
        f"{rng.choice(_BANK_CURRENCIES)} {rng.choice(_BANK_MERCHANTS)} #{rng.randint(100, 9999)} "
        f"ref {rng.randint(10000, 99999)}; flagged: {_flag(rng)}"
    )


def _payroll(rng: random.Random) -> str:
    return (
        f"ACH CREDIT {_date(rng)} PAYROLL {rng.choice(_BANK_EMPLOYERS)} "
        f"{_amount(rng, 6000.0, 800.0)} {rng.choice(_BANK_CURRENCIES)} "
        f"acct ****{rng.randint(1000, 9999)} bal {_amount(rng, 20000.0)}"
    )


def _wire(rng: random.Random) -> str:
    return (
        f"WIRE OUT {_date(rng)} {_amount(rng, 50000.0)} {rng.choice(_BANK_CURRENCIES)} to IBAN "
        f"{rng.choice(_BANK_COUNTRIES)}{rng.randint(10, 99)}****{rng.randint(1000, 9999)}; "
        f"AML score {rng.randint(0, 99)}; review: {rng.choice(('auto-cleared', 'manual', 'held'))}"
    )


def _atm(rng: random.Random) -> str:
    return (
        f"ATM WDL {_date(rng)} {rng.randint(0, 23):02d}:{rng.randint(0, 59):02d} "
        f"{rng.randrange(20, 520, 20)}.00 {rng.choice(_BANK_CURRENCIES)} "
        f"ATM-{rng.randint(100, 999)} {rng.choice(_BANK_CITIES)}; "
        f"fee {rng.choice(('0.00', '1.50', '2.95', '4.00'))}; card ****{rng.randint(1000, 9999)}"
    )


def _refund(rng: random.Random) -> str:
    return (
        f"CARD REFUND {_date(rng)} +{_amount(rng)} {rng.choice(_BANK_CURRENCIES)} "
        f"{rng.choice(_BANK_MERCHANTS)} orig ref {rng.randint(10000, 99999)}; "
        f"status: {rng.choice(_BANK_STATUS)}"
    )


def _direct_debit(rng: random.Random) -> str:
    return (
        f"DIRECT DEBIT {_date(rng)} {rng.choice(_BANK_UTILITIES)} mandate "
        f"MD-{rng.randint(100000, 999999)} {_amount(rng, 250.0)} {rng.choice(_BANK_CURRENCIES)}; "
        f"{rng.choice(('paid', 'returned: insufficient funds', 'paid', 'disputed'))}"
    )


def _velocity_alert(rng: random.Random) -> str:
    return (
        f"ALERT {_date(rng)} velocity check: {rng.randint(3, 15)} card-not-present txns in "
        f"{rng.randint(2, 30)} min, total {_amount(rng, 3000.0)} {rng.choice(_BANK_CURRENCIES)}; "
        f"card blocked: {_flag(rng)}"
    )


def _fx(rng: random.Random) -> str:
    source, target = rng.sample(_BANK_CURRENCIES, 2)
    return (
        f"FX {_date(rng)} convert {_amount(rng, 10000.0)} {source} -> {target} @ "
        f"{rng.uniform(0.6, 1.6):.4f}; spread {rng.randint(5, 80)} bps; "
        f"ref {rng.randint(10000, 99999)}"
    )


_BANK: tuple[Template, ...] = (
    _card_payment,
    _card_payment,
    _payroll,
    _wire,
    _atm,
    _refund,
    _direct_debit,
    _velocity_alert,
    _fx,
)

_TEMPLATES: dict[str, tuple[Template, ...]] = {
    "hospital-cardiology": _CARDIOLOGY,
    "hospital-pediatrics": _PEDIATRICS,
    "bank-transactions": _BANK,
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

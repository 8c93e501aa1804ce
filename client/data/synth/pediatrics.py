"""Pediatric clinic notes: well-child visits, sick visits, immunizations, growth, ED."""

from __future__ import annotations

import random

from client.data.synth.template import Template

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


TEMPLATES: tuple[Template, ...] = (
    _peds_well_child,
    _peds_sick_visit,
    _peds_parent_report,
    _peds_immunization,
    _peds_growth,
    _peds_ed,
)

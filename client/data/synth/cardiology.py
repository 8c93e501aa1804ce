"""Cardiology ward notes: admissions, echo and cath reports, triage, discharges."""

from __future__ import annotations

import random

from client.data.synth.template import Template

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


TEMPLATES: tuple[Template, ...] = (
    _cardio_admission,
    _cardio_board,
    _cardio_echo,
    _cardio_cath,
    _cardio_progress,
    _cardio_triage,
    _cardio_discharge,
)

"""Bank transaction memos: card payments, payroll, wires, ATM, refunds, alerts, FX."""

from __future__ import annotations

import random

from client.data.synth.template import Template

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


TEMPLATES: tuple[Template, ...] = (
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

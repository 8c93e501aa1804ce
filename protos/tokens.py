"""Invitation tokens: what an operator hands a node admin, and how the server stores them.

A token is ``fl1.<payload>.<secret>``: the payload (base64url JSON) carries the token id, the
enrollment address and the SHA-256 pin of the federation's CA certificate; the secret is 32
random bytes. The server keeps only the SHA-256 of the secret and compares in constant time.
Pure functions, no I/O.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
import secrets
import unicodedata
from dataclasses import dataclass

PREFIX = "fl1"
_PIN = re.compile(r"^sha256:[0-9a-f]{64}$")
_TTL = re.compile(r"^(\d+)([smhd])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
MAX_NAME_CHARS = 64
# ASCII letters and digits, then also '-', '_', '.'; nothing else (no look-alike Unicode, no
# path separators, no leading '-' or '.').
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$", re.ASCII)
NAME_RULE = (
    f"1 to {MAX_NAME_CHARS} characters: ASCII letters, digits, '-', '_' or '.', "
    "starting with a letter or digit (e.g. hospital-a)"
)


class TokenError(ValueError):
    """A token that cannot be read; the message says what is wrong and what to do."""


@dataclass(frozen=True)
class Token:
    token_id: str
    address: str  # host:port of the enrollment service
    ca_pin: str  # sha256:<hex> of the CA certificate's DER
    secret: str

    def encode(self) -> str:
        payload = json.dumps(
            {"i": self.token_id, "a": self.address, "p": self.ca_pin},
            separators=(",", ":"),
            sort_keys=True,
        )
        return f"{PREFIX}.{_b64(payload.encode())}.{self.secret}"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def new_token(*, address: str, ca_pin: str) -> Token:
    """A fresh token for ``address`` pinned to ``ca_pin``."""
    if not _PIN.match(ca_pin):
        raise ValueError(f"`ca_pin` is {ca_pin!r}: expected sha256:<64 hex digits>")
    return Token(secrets.token_hex(8), address, ca_pin, _b64(secrets.token_bytes(32)))


def parse_token(text: str) -> Token:
    """Read a token pasted by a node admin; raise :class:`TokenError` naming the problem."""
    hint = "copy the whole token the operator printed (`fedlora server invite`), one line"
    parts = text.strip().split(".")
    if len(parts) != 3 or parts[0] != PREFIX:
        raise TokenError(f"`TOKEN` is not a fedlora invitation (expected {PREFIX}.…): {hint}")
    try:
        payload = json.loads(_unb64(parts[1]))
        token = Token(str(payload["i"]), str(payload["a"]), str(payload["p"]), parts[2])
    except (binascii.Error, ValueError, KeyError, TypeError, UnicodeDecodeError):
        raise TokenError(f"`TOKEN` is damaged (its payload does not decode): {hint}") from None
    if not _PIN.match(token.ca_pin) or ":" not in token.address or not token.secret:
        raise TokenError(f"`TOKEN` is damaged (address, CA pin or secret missing): {hint}")
    return token


def secret_hash(secret: str) -> str:
    """What the server stores instead of the secret."""
    return hashlib.sha256(secret.encode()).hexdigest()


def secret_matches(secret: str, stored_hash: str) -> bool:
    """Constant-time comparison of a presented secret with the stored hash."""
    return hmac.compare_digest(secret_hash(secret), stored_hash)


def check_node_name(name: str, *, field: str = "--name") -> str:
    """Return ``name`` when it is a valid node name; raise ``ValueError`` naming ``field``,
    the value and the rule. Look-alike Unicode (a Cyrillic o, U+043E, in 'hospital') is named."""
    shown = repr(name if len(name) <= 80 else name[:80] + "…")
    if len(name) > MAX_NAME_CHARS:
        raise ValueError(f"`{field}` {shown} is {len(name)} characters long: use {NAME_RULE}")
    if not _NAME.match(name):
        foreign = next((c for c in name if not c.isascii()), None)
        detail = (
            f" (it contains {foreign!r}, U+{ord(foreign):04X} "
            f"{unicodedata.name(foreign, 'UNNAMED')}, which is not ASCII)"
            if foreign is not None
            else ""
        )
        raise ValueError(f"`{field}` is {shown}{detail}: use {NAME_RULE}")
    return name


def parse_ttl(text: str) -> int:
    """``30m``, ``1h``, ``2d``, ``90s`` -> seconds; raise naming `--ttl`."""
    match = _TTL.match(text.strip())
    if not match or int(match.group(1)) == 0:
        raise ValueError(f"`--ttl` is {text!r}: use a positive number with s, m, h or d, e.g. 1h")
    return int(match.group(1)) * _UNITS[match.group(2)]

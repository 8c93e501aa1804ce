"""The one key format a node may enroll: an OpenSSH ``ecdsa-sha2-nistp384`` public key line
(what ``fedlora node join`` writes to ``node.pub``), bounded in size, comment included.

Anything else (PEM, another algorithm or curve, a huge or binary comment) is a ``ValueError``
whose message tells the node admin what to send instead. Torch-free, Flower-free.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from dataclasses import dataclass

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

KEY_TYPE = "ecdsa-sha2-nistp384"
MAX_KEY_CHARS = 1024  # type + base64 blob (~190) + comment
MAX_COMMENT_CHARS = 256
_HINT = "send the node's OpenSSH public key (node.pub, as `fedlora node join` writes it)"


@dataclass(frozen=True)
class NodeKey:
    openssh: str  # "ecdsa-sha2-nistp384 <base64>": the comment dropped
    fingerprint: str  # SHA256:<base64>, as `ssh-keygen -l` prints it
    comment: str
    key: ec.EllipticCurvePublicKey


def parse_node_key(text: str) -> NodeKey:
    """Parse and bound an OpenSSH P-384 public key line; raise ``ValueError`` naming the
    problem."""
    if len(text) > MAX_KEY_CHARS:
        raise ValueError(
            f"the node's public key is {len(text)} characters (at most {MAX_KEY_CHARS}): {_HINT}"
        )
    stripped = text.strip()
    if stripped.startswith("-----BEGIN"):
        raise ValueError(f"the node's public key is PEM, not OpenSSH: {_HINT}")
    fields = stripped.split(maxsplit=2)
    if len(fields) < 2 or fields[0] != KEY_TYPE:
        kind = repr(fields[0][:40]) if fields else "empty"
        raise ValueError(
            f"the node's public key is not an OpenSSH EC P-384 key ({KEY_TYPE}; got {kind}): "
            f"{_HINT}"
        )
    comment = fields[2] if len(fields) == 3 else ""
    if len(comment) > MAX_COMMENT_CHARS or not comment.isprintable():
        raise ValueError(
            f"the node's public key comment must be printable and at most "
            f"{MAX_COMMENT_CHARS} characters (got {len(comment)}): {_HINT}"
        )
    line = f"{fields[0]} {fields[1]}"
    try:
        key = serialization.load_ssh_public_key(line.encode())
        blob = base64.b64decode(fields[1], validate=True)
    except (ValueError, TypeError, UnsupportedAlgorithm, binascii.Error) as err:
        raise ValueError(f"the node's public key does not decode ({err}): {_HINT}") from None
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp384r1":
        raise ValueError(f"the node's public key must be EC P-384 ({KEY_TYPE}): {_HINT}")
    digest = base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")
    return NodeKey(line, f"SHA256:{digest}", comment, key)


def fingerprint_of_pem(pem: bytes) -> str:
    """The OpenSSH fingerprint of a PEM public key (how Flower stores registered keys), or
    ``"?"`` when it does not decode."""
    try:
        key = serialization.load_pem_public_key(pem)
        line = key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        return "?"
    blob = base64.b64decode(line.split()[1])
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")

"""What a node signs to ask the enrollment service for its key's status (``NodeStatus``).

The payload binds the signature to this service and method, the node's public key, the
server's single-use nonce and the time of signing, so it cannot be replayed to another
service, for another key, or later. Pure functions, no I/O.
"""

from __future__ import annotations

SERVICE = "fedlora.enroll.v1.Enrollment/NodeStatus"
NONCE_BYTES = 32
MAX_SIGNATURE_BYTES = 128  # a DER ECDSA P-384 signature is at most 104 bytes


def status_payload(*, public_key: str, nonce: bytes, timestamp: int) -> bytes:
    """The bytes a node signs with ``node.key`` (ECDSA P-384, SHA-384).

    Parameters
    ----------
    public_key
        The node's OpenSSH public key line; only its type and base64 blob are signed (the
        comment is not part of the key).
    nonce
        The nonce the service's ``Challenge`` returned.
    timestamp
        Unix seconds when the node signed.
    """
    key = " ".join(public_key.split()[:2])
    return "\n".join((SERVICE, key, nonce.hex(), str(timestamp))).encode("ascii")

"""node start checks the node's key pair before it connects (torch-free)."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from client.node.folder import NodeDir, check_key_pair, generate_key


def test_a_good_pair_passes_and_a_swapped_public_key_is_named(tmp_path: Path) -> None:
    node = NodeDir(tmp_path)
    generate_key(node)
    check_key_pair(node)
    other = NodeDir(tmp_path / "other")
    other.root.mkdir()
    generate_key(other)
    node.pub.write_text(other.pub.read_text())
    with pytest.raises(ValueError, match=r"node\.pub is not the public half of .*node\.key"):
        check_key_pair(node)


def test_a_readable_damaged_or_foreign_key_is_refused(tmp_path: Path) -> None:
    node = NodeDir(tmp_path)
    generate_key(node)
    node.key.chmod(0o644)
    with pytest.raises(PermissionError, match="chmod 600"):
        check_key_pair(node)
    node.key.chmod(0o600)
    node.key.write_bytes(node.key.read_bytes()[:60])
    with pytest.raises(ValueError, match="is not an OpenSSH private key"):
        check_key_pair(node)
    p256 = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    node.key.write_bytes(p256)
    with pytest.raises(ValueError, match="not an EC P-384 key"):
        check_key_pair(node)

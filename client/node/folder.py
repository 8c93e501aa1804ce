"""The node folder ``NODE``: what lives where, and the node's key pair.

```
NODE/
  node.key, node.pub   the node's EC P-384 key pair (OpenSSH; node.key 0600, never leaves)
  ca.pem               the federation's CA, pinned by the token at join
  node.json            name, SuperLink and enrollment addresses, CA pin, when it joined
  state/               the node's own state across runs (privacy ledger)
  flower/              Flower's home for the SuperNode (installed app bundles)
```
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from common.files import write_private

NODE_JSON = "node.json"


@dataclass(frozen=True)
class NodeInfo:
    name: str
    node_id: int
    superlink: str
    ca_pin: str
    joined_at: str
    insecure: bool = False
    enrollment: str = ""  # the enrollment service's host:port ("" in folders joined before it)


@dataclass(frozen=True)
class NodeDir:
    root: Path

    @property
    def key(self) -> Path:
        return self.root / "node.key"

    @property
    def pub(self) -> Path:
        return self.root / "node.pub"

    @property
    def ca(self) -> Path:
        return self.root / "ca.pem"

    @property
    def info_path(self) -> Path:
        return self.root / NODE_JSON

    @property
    def state(self) -> Path:
        return self.root / "state"

    @property
    def flower_home(self) -> Path:
        return self.root / "flower"

    def load(self) -> NodeInfo:
        if not self.info_path.is_file():
            raise FileNotFoundError(
                f"`--dir` {str(self.root)!r} is not a joined node (no {NODE_JSON}): join first "
                f"with `fedlora node join TOKEN --dir {self.root}`"
            )
        if not self.key.is_file():
            raise FileNotFoundError(
                f"`--dir` {str(self.root)!r} has no node key ({self.key.name}): restore it from "
                "your backup, or join again with a new token into a fresh folder"
            )
        return NodeInfo(**json.loads(self.info_path.read_text()))


def generate_key(node: NodeDir) -> str:
    """Create the node's P-384 key pair (private key 0600, OpenSSH); return the public key."""
    key = ec.generate_private_key(ec.SECP384R1())
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    public = (
        key.public_key()
        .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        .decode()
    )
    write_private(node.key, private)
    node.pub.write_text(public + "\n")
    return public


def check_key_pair(node: NodeDir) -> None:
    """Before connecting: ``node.key`` is private (0600), a P-384 key, and ``node.pub`` is its
    public half; each problem names the file and the fix."""
    mode = node.key.stat().st_mode & 0o777
    if mode & 0o077:
        raise PermissionError(
            f"{node.key} is readable by others (mode {mode:o}): `chmod 600 {node.key}`; the key "
            "never leaves this machine, and no other user should read it"
        )
    try:
        key = serialization.load_ssh_private_key(node.key.read_bytes(), password=None)
    except (ValueError, TypeError) as err:
        raise ValueError(
            f"{node.key} is not an OpenSSH private key ({err}): restore it from your backup, or "
            "join again with a new token into a fresh folder"
        ) from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp384r1":
        raise ValueError(f"{node.key} is not an EC P-384 key: join again into a fresh folder")
    public = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    given = node.pub.read_text().split()[:2] if node.pub.is_file() else []
    if given != public.decode().split()[:2]:
        raise ValueError(
            f"{node.pub} is not the public half of {node.key}: the server knows this node by the "
            f"key it enrolled; restore both files from the same backup"
        )

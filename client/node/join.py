"""``fedlora node join``: enroll this node from an invitation token (torch-free)."""

from __future__ import annotations

import json
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path

from client.node.enroll import enroll
from client.node.folder import NodeDir, NodeInfo, generate_key
from common.files import write_json_atomic
from protos.tokens import parse_token


def join(token_text: str, root: Path, *, insecure: bool = False) -> NodeInfo:
    """Enroll this node: key pair made here, CA checked against the token's pin."""
    token = parse_token(token_text)
    node = NodeDir(root)
    if node.info_path.is_file():
        info = json.loads(node.info_path.read_text())
        raise FileExistsError(
            f"`--dir` {str(root)!r} already joined a federation as {info.get('name')!r}: use a "
            "fresh folder for another federation"
        )
    root.mkdir(parents=True, exist_ok=True)
    # A key left by an earlier, refused attempt is reused: it never left this machine.
    public = node.pub.read_text().strip() if node.key.is_file() else generate_key(node)
    enrolled = enroll(token, public_key=public, insecure=insecure)
    node.ca.write_bytes(enrolled.ca_pem)
    info = NodeInfo(
        name=enrolled.node_name,
        node_id=enrolled.node_id,
        superlink=enrolled.superlink_address,
        ca_pin=token.ca_pin,
        joined_at=datetime.now(UTC).isoformat(timespec="seconds"),
        insecure=insecure,
        enrollment=token.address,
    )
    write_json_atomic(node.info_path, asdict(info))
    node.state.mkdir(exist_ok=True)
    return info

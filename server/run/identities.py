"""Which name each Flower node was enrolled as, for the ServerApp of a deployed federation.

The operator's side (server/operator/enrollment/registry.py) keeps ``FED/enrolled-nodes.json``
(0600): ``{"nodes": {"<Flower node id>": "<name>"}}`` for every enrolled, unrevoked node,
rewritten at each enrollment and revocation. ``fedlora run`` names it in the run config
(`enrolled-nodes`); the ServerApp, on the same machine as the operator, reads it here and
re-reads it when it changes (a node may join during a run). The strategy then refuses a
reply whose node name is not its node's enrolled name (strategies/flower/replies.py).
"""

from __future__ import annotations

import json
from pathlib import Path

from common.files import write_atomic

ENROLLED_NODES_FILE = "enrolled-nodes.json"


def write_enrolled_nodes(path: Path, names: dict[int, str]) -> None:
    """Write the map ``node id -> name`` atomically, readable by the owner only."""
    text = json.dumps({"nodes": {str(k): v for k, v in sorted(names.items())}}, indent=1)
    write_atomic(path, (text + "\n").encode("utf-8"))  # mkstemp: 0600 from the start


class EnrolledNodes:
    """``node id -> enrolled name`` (None: not enrolled), from the file at ``path``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._stamp: tuple[int, int, int] | None = None
        self._names: dict[int, str] = {}

    def __call__(self, node_id: int) -> str | None:
        stat = self.path.stat()  # gone mid-run: an error, not "nobody is enrolled"
        # Each write is a new file renamed into place: a new inode, whatever the clock says.
        stamp = (stat.st_ino, stat.st_mtime_ns, stat.st_size)
        if stamp != self._stamp:
            nodes = json.loads(self.path.read_text("utf-8"))["nodes"]
            self._names = {int(k): str(v) for k, v in nodes.items()}
            self._stamp = stamp
        return self._names.get(node_id)

"""The label of each node in a run's records (``metrics.jsonl``, the report, the dashboard)."""

from __future__ import annotations

from collections.abc import Mapping

MAX_LABEL = 64  # characters of a reported name kept


class NodeLabels:
    """Each Flower node's label: the name it last reported (or, in deployment, was enrolled as).

    Labels key ``metrics.jsonl``, so each stays unique: a name another node holds is not taken
    over, and the claimant is labelled by its id instead (``node-<id>``).
    """

    def __init__(self) -> None:
        self._names: dict[int, str] = {}

    def label(self, node_id: int, name: str) -> str:
        """The node's label, taking ``name`` when it is free (error replies carry none)."""
        name = name[:MAX_LABEL]
        taken = {n for other, n in self._names.items() if other != node_id}
        if name and name not in taken:
            self._names[node_id] = name
        elif node_id not in self._names:
            label = f"node-{node_id}"
            while label in taken:
                label += "'"
            self._names[node_id] = label
        return self._names[node_id]

    def state(self) -> dict[str, str]:
        """For the checkpoint: node id (as text) -> label."""
        return {str(k): v for k, v in sorted(self._names.items())}

    def restore(self, saved: Mapping[str, object]) -> None:
        """Adopt a checkpoint's labels."""
        self._names = {int(k): str(v) for k, v in saved.items()}

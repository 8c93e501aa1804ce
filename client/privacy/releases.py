"""What leaves the node in a train reply, per privacy mode: the one table the reply is built from.

``client/app.py`` builds every record of the train reply through :func:`select`, which keeps
exactly the keys this table lists for the mode (and fails on a missing one), so the table is
the whole truth of what a node sends; ``docs/privacy-releases.md`` is rendered from it
(``python -m client.privacy.releases > docs/privacy-releases.md``, checked by a test).

Under a DP mode nothing computed from the training records leaves unless it is a noised,
accounted release or post-processing of one: the training losses and the training time stay on
the node. The server still sees when a reply arrives (Flower's message metadata), which is
coarse timing and participation, outside the guarantee.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import TypeVar

from client.privacy.settings import MODES, PrivacyMode
from strategies import protocol as p

V = TypeVar("V")
_LEDGER = "the node's ledger (public parameters of accounted releases)"

# (record, key) -> mode -> what the value is; a mode that is missing does not send the key.
TABLE: dict[tuple[str, str], dict[PrivacyMode, str]] = {
    (p.ARRAYS, p.FACTORS): {
        "none": "the trained LoRA factors, one float32 vector (A then B of each module)",
        "dp-sgd": "the LoRA factors after DP-SGD (noised per step, accounted per record)",
        "dp-lora": "A: public seeded init; B: clipped, Gaussian-noised change (accounted per "
        "institution)",
    },
    (p.METRICS, p.NUM_EXAMPLES): {
        "none": "the number of training records n",
        "dp-sgd": "ñ = n + N(0, 20²), drawn once per data set and accounted per record",
        "dp-lora": "batch-size × local-steps from the instruction (public; n stays on the node)",
    },
    (p.METRICS, p.TRAIN_LOSS): {"none": "mean training loss of the round's steps"},
    (p.METRICS, p.TRAIN_LOSS_FIRST): {"none": "training loss of the round's first step"},
    (p.METRICS, p.TRAIN_SECONDS): {"none": "training time in seconds"},
    (p.METRICS, p.DP_EPSILON_RECORD): {
        "dp-sgd": "ε per record over every release of the data set, from " + _LEDGER,
        "dp-lora": "ε per record over every release of the data set, from " + _LEDGER,
    },
    (p.METRICS, p.DP_EPSILON_INSTITUTION): {
        "dp-lora": "ε per institution, from " + _LEDGER + "; only while no per-record-only "
        "release (dp-sgd, the noised count) was made from the data set",
    },
    (p.METRICS, p.DP_DELTA): {"dp-sgd": "δ of both ε", "dp-lora": "δ of both ε"},
    (p.METRICS, p.DP_NOISE_MULTIPLIER): {
        "dp-sgd": "this round's σ (given, or calibrated from ñ)",
        "dp-lora": "this round's σ (given, or calibrated)",
    },
    (p.METRICS, p.DP_SAMPLE_RATE): {"dp-sgd": "this round's q = batch-size / ñ", "dp-lora": "1"},
    (p.METRICS, p.DP_STEPS): {
        "dp-sgd": "training steps so far on the data set (public: the instructions')",
        "dp-lora": "training steps so far on the data set (public: the instructions')",
    },
    (p.ADAPTER, p.RANK): {m: "the node's LoRA rank (node config)" for m in MODES},
    (p.ADAPTER, p.ALPHA): {m: "the node's LoRA alpha (node config)" for m in MODES},
    (p.ADAPTER, p.NODE_NAME): {m: "the node's name (node config)" for m in MODES},
    (p.ADAPTER, p.GLOBAL_FINGERPRINT): {m: "echo of the instruction's value" for m in MODES},
    (p.ADAPTER, p.LAYOUT): {m: "[r, in, out] per module: the shapes of `factors`" for m in MODES},
    (p.ADAPTER, p.MODULES): {
        m: "the LoRA module names (sorted), when they are not the ones "
        "the instruction's `modules-digest` names"
        for m in MODES
    },
    (p.ADAPTER, p.MODULES_DIGEST): {
        m: "echo of the instruction's value, when the node's modules are those" for m in MODES
    },
    (p.ADAPTER, p.QUANTIZATION): {
        m: "how the node held its base model: none, nf4 or int8 (node setting)" for m in MODES
    },
    (p.PRIVACY, p.DP_MODE): {m: "the privacy mode" for m in MODES},
    (p.PRIVACY, p.DP_HISTORY): {
        "dp-sgd": "[σ, q, steps, …] of every release, once σ or q changed, from " + _LEDGER,
        "dp-lora": "[σ, q, steps, …] of every release, once σ or q changed, from " + _LEDGER,
    },
}
# Sent only where they apply: ε per institution, the history once σ or q changed; the module
# names as one of the two.
OPTIONAL = {
    (p.METRICS, p.DP_EPSILON_INSTITUTION),
    (p.PRIVACY, p.DP_HISTORY),
    (p.ADAPTER, p.MODULES),
    (p.ADAPTER, p.MODULES_DIGEST),
}


def reply_keys(mode: PrivacyMode, record: str) -> set[str]:
    """The keys of ``record`` a train reply carries under ``mode`` (optional ones included)."""
    return {key for (rec, key), modes in TABLE.items() if rec == record and mode in modes}


def select(mode: PrivacyMode, record: str, values: Mapping[str, V]) -> dict[str, V]:
    """``values`` restricted to what the table lets leave under ``mode``.

    Raises ``KeyError`` when a key the table promises (and does not mark optional) is missing:
    the table and the reply must never drift apart.
    """
    allowed = reply_keys(mode, record)
    missing = {k for k in allowed if (record, k) not in OPTIONAL and k not in values}
    if missing:
        raise KeyError(f"reply record {record!r} lacks {sorted(missing)} under {mode!r}")
    return {k: v for k, v in values.items() if k in allowed}


def render_markdown() -> str:
    """``docs/privacy-releases.md``: the table, one row per reply key."""
    head = [
        "# What leaves a node, per privacy mode",
        "",
        "Generated from `client/privacy/releases.py` (the table `client/app.py` builds each",
        "train reply from): `python -m client.privacy.releases > docs/privacy-releases.md`.",
        "A blank cell: the key is not sent in that mode. Under `dp-sgd` and `dp-lora` no",
        "training loss and no training time leaves the node; the server still sees when a",
        "reply arrives (coarse timing, participation). Evaluate replies (`eval-loss`,",
        "`num-examples` of the held-out split) are computed from the evaluation records, which",
        "no mode protects.",
        "",
        "| record | key | " + " | ".join(f"`{m}`" for m in MODES) + " |",
        "|---|---|" + "---|" * len(MODES),
    ]
    rows = [
        f"| `{rec}` | `{key}` | " + " | ".join(modes.get(m, "") for m in MODES) + " |"
        for (rec, key), modes in TABLE.items()
    ]
    return "\n".join(head + rows) + "\n"


if __name__ == "__main__":
    sys.stdout.write(render_markdown())

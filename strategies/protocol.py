"""What travels between the ServerApp and the ClientApps, in one place.

Train instruction: ``arrays`` (the global adapter, fp32, peft key names; empty in round 1) and
``config`` (local training hyper-parameters). Train reply: ``arrays`` (only the node's LoRA
factors), ``metrics`` (``num-examples``; losses and time only without DP) and ``adapter`` (rank,
alpha, node name, and the instruction's ``global-fingerprint`` echoed back).
Evaluate reply: ``metrics`` (``eval-loss``, ``num-examples``) and ``adapter`` (node name).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from flwr.app import Array, ArrayRecord
from numpy.typing import NDArray

ARRAYS = "arrays"
CONFIG = "config"
METRICS = "metrics"
ADAPTER = "adapter"

NUM_EXAMPLES = "num-examples"
TRAIN_LOSS = "train-loss"
TRAIN_LOSS_FIRST = "train-loss-first"
TRAIN_SECONDS = "train-seconds"
# Privacy figures in a train reply (client/privacy/round.py): in `metrics` the node's cumulative
# ledger (ε per record at δ, ε per institution where the data set has that guarantee, this
# round's σ and q, steps so far); in the `privacy` config record its mode and, once σ or q has
# changed, the whole history flattened as [σ, q, steps, σ, q, steps, ...]. What a reply carries
# per mode: client/privacy/releases.py (docs/privacy-releases.md).
PRIVACY = "privacy"
DP_MODE = "dp-mode"
DP_EPSILON_RECORD = "dp-epsilon-record"
DP_EPSILON_INSTITUTION = "dp-epsilon-institution"
DP_DELTA = "dp-delta"
DP_NOISE_MULTIPLIER = "dp-noise-multiplier"
DP_SAMPLE_RATE = "dp-sample-rate"
DP_STEPS = "dp-steps"
DP_HISTORY = "dp-history"
EVAL_LOSS = "eval-loss"
RANK = "rank"
ALPHA = "alpha"
NODE_NAME = "node-name"
# How the node held its base model (node setting `quantization`: none, nf4, int8), in the train
# reply's `adapter` record, so metrics.jsonl records which node trained on what.
QUANTIZATION = "quantization"
# The global adapter's fingerprint: in each train instruction's `config`, echoed in the reply's
# `adapter` record, so a reply computed from another round's or run's adapter is refused.
GLOBAL_FINGERPRINT = "global-fingerprint"
# What the node does with the global adapter, chosen by the strategy and sent in each train
# instruction's `config` (client/model/node_mode.py): `merge` W0 + B_g A_g and train a fresh LoRA,
# or `continue` from the first r_i components of the global factors; `shared-a-seed`: start A at
# the public seeded init (strategies/math/public_a.py); `freeze-a`: train only B;
# `continue-merged` (flora): continue from the first r_i components and merge the rest into W0.
NODE_MODE = "node-mode"
MERGE = "merge"
CONTINUE = "continue"
CONTINUE_MERGED = "continue-merged"
NODE_MODES = (MERGE, CONTINUE, CONTINUE_MERGED)
SHARED_A_SEED = "shared-a-seed"
FREEZE_A = "freeze-a"


def to_record(
    arrays: Mapping[str, NDArray[np.floating]], *, dtype: type = np.float32
) -> ArrayRecord:
    """Numpy arrays -> ArrayRecord in ``dtype`` (numpy has no bf16: cast before sending)."""
    return ArrayRecord({k: Array(np.ascontiguousarray(v, dtype=dtype)) for k, v in arrays.items()})


def from_record(record: ArrayRecord) -> dict[str, NDArray[np.floating]]:
    """ArrayRecord -> numpy arrays (loaded with ``allow_pickle=False`` by Flower)."""
    return {key: value.numpy() for key, value in record.items()}

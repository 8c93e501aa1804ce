"""What travels between the ServerApp and the ClientApps, in one place.

Train instruction: ``arrays`` (the global adapter, fp32, peft key names; empty in round 1) and
``config`` (local training hyper-parameters). Train reply: ``arrays`` (only the node's LoRA
factors, as one flat float32 array ``factors``: :mod:`strategies.math.packing`), ``metrics``
(``num-examples``; losses and time only without DP) and ``adapter`` (rank, alpha, node name, the
instruction's ``global-fingerprint`` echoed back, and the factors' ``layout`` and ``modules``).
Evaluate reply: ``metrics`` (``eval-loss``, ``num-examples``) and ``adapter`` (node name).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from flwr.app import Array, ArrayRecord
from numpy.typing import NDArray

from strategies.math.factors import split_factor_keys
from strategies.math.packing import module_digest, pack

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
# A train reply's factors: one array `factors` in `arrays` (raw little-endian float32 bytes, no
# numpy header: Flower's Array already carries dtype and shape) and, in `adapter`, its `layout`
# ([r, in, out] per module) and the module names: `modules` (sorted), or `modules-digest` when
# they are exactly the modules whose digest the train instruction's `config` carried.
FACTORS = "factors"
LAYOUT = "layout"
MODULES = "modules"
MODULES_DIGEST = "modules-digest"
RAW_STYPE = "raw-float32-le"
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


def pack_factors(
    arrays: Mapping[str, NDArray[np.floating]], *, modules_digest: object = None
) -> tuple[ArrayRecord, dict[str, str | list[str] | list[int]]]:
    """A node's factors (peft key names) -> the reply's ``arrays`` record and ``adapter`` fields.

    The module names go as ``modules-digest`` when it equals ``modules_digest`` (the value the
    instruction carried, i.e. the server expects exactly these modules), else in full.

    Raises
    ------
    ValueError
        A key is not a LoRA factor, a factor lacks its pair, or shapes do not pair up.
    """
    pairs, problems = split_factor_keys(arrays)
    if problems:
        raise ValueError("the LoRA factors cannot be sent: " + "; ".join(problems[:3]))
    flat, modules, layout = pack(pairs)
    names: dict[str, str | list[str]] = {MODULES: modules}
    if isinstance(modules_digest, str) and modules_digest == module_digest(modules):
        names = {MODULES_DIGEST: modules_digest}
    return ArrayRecord({FACTORS: flat_array(flat)}), {LAYOUT: layout, **names}


def flat_array(flat: NDArray[np.floating]) -> Array:
    """A 1-D float32 vector as an Array of its raw little-endian bytes."""
    data = np.ascontiguousarray(flat, dtype="<f4")
    return Array(dtype="float32", shape=(data.size,), stype=RAW_STYPE, data=data.tobytes())


def read_flat(record: ArrayRecord) -> tuple[NDArray[np.float32] | None, list[str]]:
    """The reply's one ``factors`` vector (a read-only view of its bytes), or the problems.

    The record must hold exactly ``factors``: 1-D, dtype float32, stype ``raw-float32-le`` and as
    many bytes as its shape says.
    """
    keys = sorted(record)
    if keys != [FACTORS]:
        listed = ", ".join(f"`{k[:40]}`" for k in keys[:3]) or "nothing"
        return None, [f"`{ARRAYS}` holds {listed}: it must hold exactly one array `{FACTORS}`"]
    array = record[FACTORS]
    shape = tuple(array.shape)
    if array.stype != RAW_STYPE or array.dtype != "float32":
        return None, [f"`{FACTORS}` is {str(array.dtype)[:20]!r} as {str(array.stype)[:30]!r}: "
                      f"must be float32 as {RAW_STYPE!r}"]  # fmt: skip
    if len(shape) != 1 or not isinstance(shape[0], int) or len(array.data) != 4 * shape[0]:
        return None, [f"`{FACTORS}` has shape {str(shape)[:40]} and {len(array.data)} bytes: must "
                      "be one vector of 4 bytes per float"]  # fmt: skip
    return np.frombuffer(array.data, dtype="<f4"), []

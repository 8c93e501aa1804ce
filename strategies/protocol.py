"""What travels between the ServerApp and the ClientApps, in one place.

Train instruction: ``arrays`` (the global adapter, fp32, peft key names; empty in round 1) and
``config`` (local training hyper-parameters). Train reply: ``arrays`` (only the node's LoRA
factors, as one flat float32 array ``factors``: :mod:`strategies.math.packing`), ``metrics``
(``num-examples``; losses and time only without DP) and ``adapter`` (rank, alpha, node name, the
instruction's ``global-fingerprint`` echoed back, and the factors' ``layout`` and ``modules``).
Evaluate reply: ``metrics`` (``eval-loss``, ``num-examples``) and ``adapter`` (node name).
A reply's config records together, names included, hold at most :data:`MAX_CONFIG_BYTES`.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Mapping

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

# The cap on a reply's config records together (:func:`config_bytes`), checked before anything in
# them is read. The largest a node sends is the train reply's `adapter` record with the module
# names in full: 39.2 KiB for a 70B Llama (80 layers x 7 modules = 560 names, 26 490 bytes, and
# a 13 440-byte layout), 61.8 KiB for a 405B (126 x 7), 73.6 KiB for Mixtral 8x7B with every
# expert adapted (32 x 28); `privacy`'s `dp-history` adds 24 bytes per change of σ or q. 256 KiB
# leaves 6.5x over the 70B and 3.5x over Mixtral (docs/reliability.md).
MAX_CONFIG_BYTES = 256 * 1024


def config_bytes(record: Mapping[str, object]) -> int:
    """The bytes a config record holds: each key's and string's UTF-8 bytes, a bytes value's
    length, 8 per number and 1 per bool, list items each counted so.

    Flower's ``ConfigRecord.count_bytes`` counts the same for ASCII, but counts characters, not
    bytes, and raises ``IndexError`` on an empty list (which a reply may carry).
    """
    total = 0
    for key, value in record.items():
        total += len(key.encode("utf-8", "surrogatepass"))
        items = value if isinstance(value, list) else [value]
        if items and isinstance(items[0], int | float) and not isinstance(items[0], bool):
            total += 8 * len(items)  # Flower keeps a list's items of one type
            continue
        for item in items:
            total += _scalar_bytes(item)
    return total


def _scalar_bytes(value: object) -> int:
    if isinstance(value, bool):
        return 1
    if isinstance(value, int | float):
        return 8
    if isinstance(value, str):
        return len(value.encode("utf-8", "surrogatepass"))
    if isinstance(value, bytes):
        return len(value)
    raise TypeError(f"a config record holds {type(value).__name__}: not a Flower config value")


# The records a node's reply may carry, by kind (client/app.py builds them).
REPLY_RECORDS = {
    "array": frozenset({ARRAYS}),
    "metric": frozenset({METRICS}),
    "config": frozenset({ADAPTER, PRIVACY}),
}


def record_problem(kinds: Mapping[str, Iterable[str]]) -> str | None:
    """Why a reply is refused for a record no fedlora node sends (``kinds``: the names of its
    array, metric and config records), naming up to three; None when it has none. Without it an
    extra array record would escape `max-reply-mb`, which counts the ``arrays`` record."""
    extra = [f"{kind} record `{name[:40]}`" for kind, names in sorted(kinds.items())
             for name in sorted(names)
             if name not in REPLY_RECORDS.get(kind, frozenset())]  # fmt: skip
    if not extra:
        return None
    more = f" and {len(extra) - 3} more" if len(extra) > 3 else ""
    return (
        f"the reply carries {', '.join(extra[:3])}{more}: a fedlora node's reply holds only the "
        f"array record `{ARRAYS}`, the metric record `{METRICS}` and the config records "
        f"`{ADAPTER}` and `{PRIVACY}` (server and node may run different fedlora versions); "
        "this reply was not used"
    )


def config_problem(records: Mapping[str, Mapping[str, object]]) -> str | None:
    """Why a reply's config records are refused (their bytes together over
    :data:`MAX_CONFIG_BYTES`, each record's name counted with it), naming the largest records;
    None when they fit."""
    sizes = {name: len(name.encode("utf-8", "surrogatepass")) + config_bytes(record)
             for name, record in records.items()}  # fmt: skip
    total = sum(sizes.values())
    if total <= MAX_CONFIG_BYTES:
        return None
    largest = sorted(sizes, key=lambda name: (-sizes[name], name))[:3]
    named = ", ".join(f"`{name[:40]}` {sizes[name]} bytes" for name in largest)
    return (
        f"the reply's config records hold {total} bytes ({named}), over the cap of "
        f"{MAX_CONFIG_BYTES} bytes ({MAX_CONFIG_BYTES // 1024} KiB) on a reply's config records: "
        "a fedlora node sends at most a few dozen KiB (the module names of its adapter); "
        "this reply was not used"
    )


def to_record(
    arrays: Mapping[str, NDArray[np.floating]], *, dtype: type = np.float32
) -> ArrayRecord:
    """Numpy arrays -> ArrayRecord in ``dtype`` (numpy has no bf16: cast before sending)."""
    return ArrayRecord({k: Array(np.ascontiguousarray(v, dtype=dtype)) for k, v in arrays.items()})


def from_record(record: ArrayRecord) -> dict[str, NDArray[np.floating]]:
    """ArrayRecord -> numpy arrays (loaded with ``allow_pickle=False`` by Flower)."""
    return {key: value.numpy() for key, value in record.items()}


def view_record(record: ArrayRecord) -> dict[str, NDArray[np.floating]]:
    """ArrayRecord -> read-only numpy views of the arrays' bytes, without copying them.

    Equal to :func:`from_record` (a ``.npy`` header read as ``np.load`` reads it, never a
    pickle); an array that is not a plain C-order floating ``.npy`` is loaded by Flower instead.
    """
    return {key: _view(value) for key, value in record.items()}


def _view(array: Array) -> NDArray[np.floating]:
    if array.stype == "numpy.ndarray":
        data = io.BytesIO(array.data)
        version = np.lib.format.read_magic(data)
        if version in ((1, 0), (2, 0)):
            read = {(1, 0): np.lib.format.read_array_header_1_0,
                    (2, 0): np.lib.format.read_array_header_2_0}[version]  # fmt: skip
            shape, fortran, dtype = read(data)
            count = int(np.prod(shape, dtype=np.int64))
            offset = data.tell()
            if (not fortran and dtype.kind == "f"
                    and len(array.data) == offset + count * dtype.itemsize):  # fmt: skip
                view = np.frombuffer(array.data, dtype=dtype, count=count, offset=offset)
                return view.reshape(shape)
    return array.numpy()


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

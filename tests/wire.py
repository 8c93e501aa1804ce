"""Train replies' factors as a node that ignores the rules might send them (tests only).

``strategies.protocol.pack_factors`` refuses to pack malformed factors; these helpers pack
whatever they are given, so tests can send the server every malformed layout.
"""

from __future__ import annotations

import numpy as np
from flwr.app import Array, ArrayRecord

from strategies import protocol as p
from strategies.math.factors import A_SUFFIX, B_SUFFIX


def raw_array(flat: np.ndarray, *, dtype: str | None = None, stype: str = p.RAW_STYPE) -> Array:
    """``flat``'s bytes as one Flower Array, its dtype and stype as given."""
    data = np.ascontiguousarray(flat)
    return Array(dtype=dtype or str(data.dtype), shape=(data.size,), stype=stype,
                 data=data.tobytes())  # fmt: skip


def hostile_factors(
    arrays: dict[str, np.ndarray], *, names: list[str] | None = None
) -> tuple[ArrayRecord, dict[str, list[str] | list[int]]]:
    """Pack ``arrays`` (peft key names) like a node would, checking nothing.

    Modules in sorted order, A then B, each as shaped; the layout declares ``[A rows, A columns,
    B rows]`` per module; floating factors become float32, other dtypes are kept as they are.
    """
    modules = sorted({k.removesuffix(A_SUFFIX).removesuffix(B_SUFFIX) for k in arrays})
    parts, layout = [], []
    for module in modules:
        a, b = arrays[module + A_SUFFIX], arrays[module + B_SUFFIX]
        layout += [a.shape[0], a.shape[1], b.shape[0]]
        parts += [np.ravel(a), np.ravel(b)]
    flat = np.concatenate(parts)
    if np.issubdtype(flat.dtype, np.floating):
        flat = flat.astype(np.float32)
    record = ArrayRecord({p.FACTORS: raw_array(flat)})
    return record, {p.LAYOUT: layout, p.MODULES: modules if names is None else names}

"""A node's LoRA factors as one flat float32 vector and its layout, and back.

Flower spends about 550 bytes on every array of a message (its metadata, a chunk, a reference in
the record, numpy's header), so one array per factor costs 5-19 % over the factors' own bytes on
a small model. A train reply therefore carries one flat vector: for each module, in sorted name
order, A (r, in) then B (out, r), both row-major. The layout travels beside it as integers,
``[r, in, out]`` per module in the same order, and the module names either in full or, when they
are exactly the modules the server expects, as :func:`module_digest` of the sorted names.

:func:`check_layout` refuses every layout that does not describe the vector exactly; only then
does :func:`unpack` cut it into views. Nothing here trusts a declared number before checking it.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
from numpy.typing import NDArray

from strategies.math.factors import LowRank

FIELDS = 3  # r, in, out per module


def module_digest(modules: Iterable[str]) -> str:
    """SHA-256 (first 32 hex digits) of the sorted module names, one per line."""
    return hashlib.sha256("\n".join(sorted(modules)).encode()).hexdigest()[:32]


def pack(pairs: Mapping[str, LowRank]) -> tuple[NDArray[np.float32], list[str], list[int]]:
    """Module -> (A (r, in), B (out, r)) to ``(flat, modules, layout)``.

    ``modules`` is sorted; ``layout`` is ``[r, in, out]`` per module in that order; ``flat``
    holds A then B of each module, row-major, as float32.

    Raises
    ------
    ValueError
        A factor is not a matrix, or A's rows and B's columns differ.
    """
    modules = sorted(pairs)
    layout: list[int] = []
    parts = []
    for module in modules:
        a, b = pairs[module]
        if a.ndim != 2 or b.ndim != 2 or a.shape[0] != b.shape[1]:
            raise ValueError(f"module `{module}`: A is {a.shape} and B is {b.shape}; "
                             "need A (r, in) and B (out, r)")  # fmt: skip
        layout += [a.shape[0], a.shape[1], b.shape[0]]
        parts += [np.ravel(a), np.ravel(b)]
    flat = np.concatenate(parts).astype(np.float32) if parts else np.zeros(0, np.float32)
    return flat, modules, layout


def _is_int(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def check_layout(layout: object, *, size: int) -> list[str]:
    """Problems with a declared ``layout`` for a flat vector of ``size`` floats (empty: fine).

    It must be a non-empty list of ``[r, in, out]`` triples of integers >= 1 whose factors,
    r·in + out·r per module, add up to exactly ``size``.
    """
    if not isinstance(layout, list) or not layout or len(layout) % FIELDS:
        return [f"`layout` is {_short(layout)}: must be [r, in, out] per module, integers"]
    bad = next((x for x in layout if not _is_int(x) or x < 1), None)
    if bad is not None:
        return [f"`layout` holds {bad!r}: every r, in and out must be an integer >= 1"]
    declared = sum(r * (i + o) for r, i, o in _triples(layout))
    if declared != size:
        return [f"`layout` declares {declared} floats but `factors` holds {size}: the layout "
                "must describe the vector exactly"]  # fmt: skip
    return []


def check_modules_list(modules: object, *, count: int) -> list[str]:
    """Problems with a declared list of module names for ``count`` modules (empty: fine)."""
    if not isinstance(modules, list) or not all(isinstance(m, str) and m for m in modules):
        return [f"`modules` is {_short(modules)}: must be a list of module names"]
    if len(modules) != count:
        return [f"`modules` names {len(modules)} modules but `layout` describes {count}"]
    if any(x >= y for x, y in itertools.pairwise(modules)):
        return ["`modules` must be sorted and without repeats (the factors' packing order)"]
    return []


def unpack(
    flat: NDArray[np.floating], modules: Sequence[str], layout: Sequence[int]
) -> dict[str, LowRank]:
    """Inverse of :func:`pack` on a layout that passed :func:`check_layout`: views, no copies."""
    pairs: dict[str, LowRank] = {}
    offset = 0
    for module, (rank, fan_in, fan_out) in zip(modules, _triples(layout), strict=True):
        a = flat[offset : offset + rank * fan_in].reshape(rank, fan_in)  # (r, in)
        offset += rank * fan_in
        b = flat[offset : offset + fan_out * rank].reshape(fan_out, rank)  # (out, r)
        offset += fan_out * rank
        pairs[module] = (a, b)
    assert offset == flat.size, "check_layout guarantees the layout covers the vector"
    return pairs


def _triples(layout: Sequence[int]) -> list[tuple[int, int, int]]:
    return [(layout[i], layout[i + 1], layout[i + 2]) for i in range(0, len(layout), FIELDS)]


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."

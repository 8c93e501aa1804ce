"""Seconds a message spends in each phase (load, apply, ...), per thread; torch-free.

The model code marks its phases with :func:`phase`; whoever runs the message (the node worker)
calls :func:`take` when the message ends to read and reset them. Nothing here changes a result.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

_local = threading.local()


def _spent() -> dict[str, float]:
    if not hasattr(_local, "spent"):
        _local.spent = {}
    spent: dict[str, float] = _local.spent
    return spent


@contextmanager
def phase(name: str) -> Iterator[None]:
    """Add the wall time of the ``with`` block to this thread's ``name`` phase."""
    started = time.perf_counter()
    try:
        yield
    finally:
        spent = _spent()
        spent[name] = spent.get(name, 0.0) + time.perf_counter() - started


def take() -> dict[str, float]:
    """This thread's seconds per phase since the last call; resets them."""
    spent = dict(_spent())
    _spent().clear()
    return spent

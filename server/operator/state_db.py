"""The SuperLink's SQLite state (``FED/flower/state.db``): a write waits for the lock, up to
:data:`BUSY_TIMEOUT_S`, instead of failing after Flower's 5 s.

Flower 1.39 keeps the SuperLink's state (runs, messages, tasks, nonces) and its object store
(every array of every message, one row per object) in one SQLite file, through SQLAlchemy
(``flwr/supercore/sql_mixin.py``). Each connection gets ``journal_mode=WAL`` (readers never wait
for the writer) and ``busy_timeout=5000`` (``flwr.supercore.constant.SQLITE_PRAGMAS``). SQLite
allows one writer at a time, and Flower holds the write lock for a message's whole object tree:
storing it (``preregister``: a row, the children's rows and their reference counts per object)
or deleting it once delivered. A message carrying the global adapter of SmolLM2-135M's shape
(LoRA on all linear layers: 420 arrays, 842 objects, two per array) is 1268 to 3380 writes in one
transaction, measured at 0.7 to 2.4 s on a 2-core machine at load 5 to 6 (preregistering 842 objects
alone: 1.3 s; 2522 objects: 4.1 s). Writes queue behind such transactions; under heavier load
the queue passed 5 s, every waiting write failed with ``database is locked`` and the Runtime
API answered 500 — which Flower's clients do not retry: the SuperExec exited, the run's
ServerApp failed, the federation stopped.

:func:`wait_for_locks` lets every SQLite connection of this process wait :data:`BUSY_TIMEOUT_S`
for the lock. It is installed in ``server.operator.superlink_main`` before Flower builds its
state, through SQLAlchemy's public pool events (no change to Flower): at each checkout it sets
``PRAGMA busy_timeout`` on a connection that does not have it yet, which also overrides the 5 s
Flower's own ``connect`` listener sets. 25 s stays below the 30 s read timeout of Flower's HTTP
clients (``flwr/supercore/protobuf/client.py``), so a waiting request is answered before its
client would give up (a timed-out request is retried; a 500 is not).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from typing import Any

from sqlalchemy import event
from sqlalchemy.pool import Pool

BUSY_TIMEOUT_S = 25.0
_INFO_KEY = "fedlora_busy_timeout_ms"


def wait_for_locks(*, timeout_s: float = BUSY_TIMEOUT_S) -> Callable[[], None]:
    """Make every SQLite connection this process checks out of a SQLAlchemy pool wait up to
    ``timeout_s`` for a lock.

    Parameters
    ----------
    timeout_s : float
        SQLite's busy timeout, in seconds: how long a statement waits for another
        connection's lock before it fails with ``database is locked``.

    Returns
    -------
    Callable[[], None]
        Removes the setting for connections checked out from then on.
    """
    if timeout_s <= 0:
        raise ValueError(f"`timeout_s` is {timeout_s}: give a positive number of seconds")
    millis = round(timeout_s * 1000)

    def on_checkout(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        if record.info.get(_INFO_KEY) == millis or not isinstance(
            dbapi_connection, sqlite3.Connection
        ):
            return
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout = {millis}")
        finally:
            cursor.close()
        record.info[_INFO_KEY] = millis

    event.listen(Pool, "checkout", on_checkout)
    return lambda: event.remove(Pool, "checkout", on_checkout)

"""The federation's enrollment records in one SQLite file: invitations (hashed), enrolled nodes,
and an event log of every enrollment and refusal.

SQLite gives the atomicity the service needs across threads and processes (`fedlora server
invite` writes while `fedlora server start` serves): an enrollment runs in one ``BEGIN
IMMEDIATE`` transaction, so of two joins racing with one token exactly one wins.

``enrolled-nodes.json`` (what the ServerApp checks reply names by) is rewritten from the
registry's own state inside the transaction that changes it, before the commit, while that
transaction holds the database's write lock: of an enrollment (`server start`) and a revocation
(`server revoke`, another process) the later one to commit also writes the file later, from a
state that includes the earlier one, so the file is never an event behind the registry.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

from protos.tokens import check_node_name, secret_hash, secret_matches
from server.run.identities import ENROLLED_NODES_FILE, write_enrolled_nodes

_SCHEMA = """
CREATE TABLE IF NOT EXISTS invitations (
    id TEXT PRIMARY KEY, name TEXT NOT NULL, secret_hash TEXT NOT NULL,
    created_at REAL NOT NULL, expires_at REAL NOT NULL, used_at REAL, used_by TEXT);
CREATE TABLE IF NOT EXISTS nodes (
    name TEXT PRIMARY KEY, node_id TEXT NOT NULL,  -- uint64: beyond SQLite INTEGER
    fingerprint TEXT NOT NULL,
    public_key TEXT NOT NULL, enrolled_at REAL NOT NULL, status TEXT NOT NULL,
    revoked_at REAL);
CREATE TABLE IF NOT EXISTS events (
    at REAL NOT NULL, peer TEXT NOT NULL, name TEXT, outcome TEXT NOT NULL, reason TEXT);
"""

ENROLLED = "enrolled"
REVOKED = "revoked"


class Refused(Exception):
    """An enrollment the service turns down; ``str()`` is the reason the node admin sees."""


@dataclass(frozen=True)
class NodeRecord:
    name: str
    node_id: int
    fingerprint: str
    enrolled_at: float
    status: str
    revoked_at: float | None = None


@dataclass(frozen=True)
class Invitation:
    token_id: str
    name: str
    created_at: float
    expires_at: float


Register = Callable[[str, str], int]  # (node name, OpenSSH public key) -> Flower node id
Unregister = Callable[[int], None]  # Flower node id -> the key no longer registered


class Registry:
    """Invitations, nodes and events of one federation (``FED/enrollment.db``)."""

    def __init__(self, path: Path, *, busy_timeout_s: float = 30.0) -> None:
        self.path = path
        self.busy_timeout_s = busy_timeout_s  # how long a writer waits for another's lock
        with self._connect() as conn:
            conn.executescript(_SCHEMA)
        path.chmod(0o600)  # invitations, keys and the audit trail are the operator's alone
        self.write_names()

    @property
    def names_path(self) -> Path:
        """``enrolled-nodes.json`` beside the database: what the ServerApp checks names by."""
        return self.path.parent / ENROLLED_NODES_FILE

    def write_names(self) -> None:
        """Rewrite the map ``Flower node id -> name`` of the enrolled, unrevoked nodes, under
        the database's write lock (one empty write transaction)."""
        with self._writing():
            pass

    @contextmanager
    def _writing(self) -> Iterator[sqlite3.Connection]:
        """A write transaction (``BEGIN IMMEDIATE``) that ends by rewriting the names map from
        the state it is about to commit, still holding the write lock, then commits.

        Should the commit fail after the map was written, it rolls back and rewrites the map
        from the committed state, so the file is not left ahead of the database either.
        """
        written = False
        with self._connect() as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
                written = True
                self._write_names(conn)
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                if written:
                    with suppress(Exception):  # the error that rolled back is the one to report
                        self.write_names()
                raise

    def _write_names(self, conn: sqlite3.Connection) -> None:
        rows = conn.execute("SELECT node_id, name FROM nodes WHERE status = ?", (ENROLLED,))
        write_enrolled_nodes(self.names_path, {int(r[0]): str(r[1]) for r in rows.fetchall()})

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        conn = sqlite3.connect(self.path, timeout=self.busy_timeout_s, isolation_level=None)
        try:
            yield conn
        finally:
            conn.close()

    def add_invitation(self, *, token_id: str, name: str, secret: str, ttl_s: int) -> None:
        """Store a new invitation for ``name``; refuse a name that breaks the naming rule, is
        already enrolled, or already has a pending invitation."""
        check_node_name(name)
        now = time.time()
        with self._connect() as conn:
            conn.execute("BEGIN IMMEDIATE")
            problem = None
            if self._enrolled(conn, name):
                problem = (
                    f"`--name` {name!r} is already enrolled: pick another name, or "
                    f"`fedlora server revoke {name}` first to replace that node"
                )
            elif self._pending(conn, now, name):
                problem = (
                    f"`--name` {name!r} already has a pending invitation (one per name): hand "
                    "that one over, or cancel it with `fedlora server invitations --dir FED "
                    f"--cancel {name}` and invite again"
                )
            if problem is not None:
                conn.execute("ROLLBACK")
                raise Refused(problem)
            conn.execute(
                "INSERT INTO invitations VALUES (?, ?, ?, ?, ?, NULL, NULL)",
                (token_id, name, secret_hash(secret), now, now + ttl_s),
            )
            conn.execute("COMMIT")
        self.log(peer="operator", name=name, outcome="invited", reason=f"token {token_id}")

    @staticmethod
    def _pending(conn: sqlite3.Connection, now: float, name: str | None) -> list[Invitation]:
        rows = conn.execute(
            "SELECT id, name, created_at, expires_at FROM invitations "
            "WHERE used_at IS NULL AND expires_at > ? AND (? IS NULL OR name = ?) "
            "ORDER BY created_at",
            (now, name, name),
        ).fetchall()
        return [Invitation(str(r[0]), str(r[1]), float(r[2]), float(r[3])) for r in rows]

    def pending(self) -> list[Invitation]:
        """Invitations not used and not expired, oldest first."""
        with self._connect() as conn:
            return self._pending(conn, time.time(), None)

    def cancel_invitations(self, name: str) -> int:
        """Delete ``name``'s unused invitations (pending or expired); return how many."""
        with self._connect() as conn:
            count = conn.execute(
                "DELETE FROM invitations WHERE name = ? AND used_at IS NULL", (name,)
            ).rowcount
        if count:
            self.log(
                peer="operator", name=name, outcome="cancelled", reason=f"{count} invitation(s)"
            )
        return int(count)

    def enroll(
        self,
        *,
        token_id: str,
        secret: str,
        public_key: str,
        fingerprint: str,
        peer: str,
        register: Register,
        unregister: Unregister | None = None,
    ) -> NodeRecord:
        """Consume the token and register the key (all or nothing); raise :class:`Refused`.

        Flower registers the key inside the transaction; should anything after it fail (the
        names map, the commit), the transaction rolls back and ``unregister`` takes the key out
        of Flower again, so no key stays registered that fedlora does not know (it would show as
        a stranger in `fedlora server nodes`, and its token could not be used again). If that
        fails too, the audit trail names the Flower node id to remove.
        """
        registered: int | None = None
        try:
            with self._writing() as conn:
                name = self._check_token(conn, token_id, secret)
                node_id = registered = register(name, public_key)
                now = time.time()
                conn.execute(
                    "UPDATE invitations SET used_at = ?, used_by = ? WHERE id = ?",
                    (now, fingerprint, token_id),
                )
                conn.execute(
                    "INSERT OR REPLACE INTO nodes VALUES (?, ?, ?, ?, ?, ?, NULL)",
                    (name, str(node_id), fingerprint, public_key, now, ENROLLED),
                )
        except Exception as err:
            reason = str(err) if isinstance(err, Refused) else f"registration failed: {err}"
            if registered is not None:
                reason += self._take_back(registered, unregister)
            self.log(peer=peer, name=None, outcome="refused", reason=reason)
            raise Refused(reason) from err
        self.log(peer=peer, name=name, outcome="enrolled", reason=f"key {fingerprint}")
        return NodeRecord(name, node_id, fingerprint, now, ENROLLED)

    @staticmethod
    def _take_back(node_id: int, unregister: Unregister | None) -> str:
        """Unregister a key whose enrollment rolled back; what became of it, for the reason."""
        if unregister is None:
            return f"; Flower node {node_id} keeps the key: remove it (`flwr` Control API)"
        try:
            unregister(node_id)
        except Exception as err:
            return (f"; Flower node {node_id} keeps the key, unregistering failed ({err}): "
                    "remove it (`flwr` Control API)")  # fmt: skip
        return f"; the key was unregistered from Flower again (node {node_id})"

    def _check_token(self, conn: sqlite3.Connection, token_id: str, secret: str) -> str:
        row = conn.execute(
            "SELECT name, secret_hash, expires_at, used_at FROM invitations WHERE id = ?",
            (token_id,),
        ).fetchone()
        # An unknown id and a wrong secret read the same: the caller learns nothing.
        if row is None or not secret_matches(secret, row[1]):
            raise Refused("unknown token: ask the operator for a new one (`fedlora server invite`)")
        name, _, expires_at, used_at = row
        if used_at is not None:
            raise Refused(
                f"token for {name!r} was already used: tokens are single-use; "
                "ask the operator for a new one"
            )
        if expires_at <= time.time():
            raise Refused(
                f"token for {name!r} expired: ask the operator for a new one "
                "(`fedlora server invite --ttl ...` sets its lifetime)"
            )
        if self._enrolled(conn, name):
            raise Refused(
                f"a node named {name!r} is already enrolled: the operator must revoke it first"
            )
        return str(name)

    @staticmethod
    def _enrolled(conn: sqlite3.Connection, name: str) -> bool:
        row = conn.execute(
            "SELECT 1 FROM nodes WHERE name = ? AND status = ?", (name, ENROLLED)
        ).fetchone()
        return row is not None

    def nodes(self) -> list[NodeRecord]:
        with self._connect() as conn:
            rows = conn.execute(
                "SELECT name, node_id, fingerprint, enrolled_at, status FROM nodes ORDER BY name"
            ).fetchall()
        return [NodeRecord(str(r[0]), int(r[1]), str(r[2]), float(r[3]), str(r[4])) for r in rows]

    def node(self, name: str) -> NodeRecord | None:
        return next((n for n in self.nodes() if n.name == name), None)

    def node_by_key(self, public_key: str) -> NodeRecord | None:
        """The record of the OpenSSH key ``public_key`` (type and blob): its enrolled name if
        it has one, else its latest revoked one; None when it was never enrolled."""
        with self._connect() as conn:
            row = conn.execute(
                "SELECT name, node_id, fingerprint, enrolled_at, status, revoked_at FROM nodes "
                "WHERE public_key = ? ORDER BY status = ? DESC, revoked_at DESC LIMIT 1",
                (public_key, ENROLLED),
            ).fetchone()
        if row is None:
            return None
        revoked_at = None if row[5] is None else float(row[5])
        return NodeRecord(
            str(row[0]), int(row[1]), str(row[2]), float(row[3]), str(row[4]), revoked_at
        )

    def mark_revoked(self, name: str) -> int:
        """Mark ``name`` revoked and cancel its unused invitations in the same transaction (an
        older invitation must not re-enroll a revoked name); return how many were cancelled."""
        with self._writing() as conn:
            conn.execute(
                "UPDATE nodes SET status = ?, revoked_at = ? WHERE name = ?",
                (REVOKED, time.time(), name),
            )
            cancelled = conn.execute(
                "DELETE FROM invitations WHERE name = ? AND used_at IS NULL", (name,)
            ).rowcount
        self.log(peer="operator", name=name, outcome="revoked", reason=f"{cancelled} cancelled")
        return int(cancelled)

    def log(self, *, peer: str, name: str | None, outcome: str, reason: str) -> None:
        with self._connect() as conn:
            conn.execute(
                "INSERT INTO events VALUES (?, ?, ?, ?, ?)",
                (time.time(), peer, name, outcome, reason),
            )

    def events(self) -> list[tuple[float, str, str | None, str, str]]:
        with self._connect() as conn:
            rows = conn.execute("SELECT at, peer, name, outcome, reason FROM events").fetchall()
        return [(float(r[0]), str(r[1]), r[2], str(r[3]), str(r[4] or "")) for r in rows]

"""The one way fedlora writes files: atomically, or private (0600) from the start."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path


def write_private(path: Path, data: bytes) -> None:
    """Create ``path`` with mode 0600 from the start (never readable by others, not briefly)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers (and a restart after a crash) see the old file
    or the new one, never half of one: temp file in the same folder, fsync, rename, fsync the
    folder."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # the rename itself survives a power cut
    finally:
        os.close(dir_fd)


def write_json_atomic(path: Path, data: object) -> None:
    """:func:`write_atomic` of ``data`` as indented, key-sorted JSON."""
    write_atomic(path, (json.dumps(data, indent=2, sort_keys=True) + "\n").encode("utf-8"))

"""Node data: JSONL files (or the embedded synthetic default) -> training texts.

A record is one JSON object per line, either ``{"text": ...}`` or
``{"instruction": ..., "response": ...}`` (optionally with ``"input"``). Torch-free.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, TextIO

from client.data.synth import EVAL_FILE, TRAIN_FILE, profile_for_partition, synth_partition
from client.settings import NodeSettings

# One record (one JSONL line) at most: a bounded read, so a file without newlines cannot exhaust
# the node's memory before its first record is checked.
MAX_RECORD_CHARS = 1_000_000


def record_to_text(record: Mapping[str, Any], *, where: str) -> str:
    """Turn one JSONL record into the text the model trains on."""
    if isinstance(record.get("text"), str):
        return str(record["text"])
    if isinstance(record.get("instruction"), str) and isinstance(record.get("response"), str):
        extra = f"\n{record['input']}" if record.get("input") else ""
        return (
            f"### Instruction:\n{record['instruction']}{extra}\n### Response:\n{record['response']}"
        )
    keys = sorted(record)[:5]
    raise ValueError(
        f'{where}: record has keys {keys}; use {{"text": ...}} or '
        '{"instruction": ..., "response": ...}'
    )


def _lines(handle: TextIO, path: Path) -> Iterator[tuple[int, str]]:
    """(line number, line), never reading more than MAX_RECORD_CHARS of one line into memory."""
    lineno = 0
    while line := handle.readline(MAX_RECORD_CHARS + 1):
        lineno += 1
        if len(line) > MAX_RECORD_CHARS and not line.endswith("\n"):
            raise ValueError(
                f"{path}:{lineno}: a record longer than {MAX_RECORD_CHARS:,} characters; split "
                "it into several records (a model trains on at most `max-length` tokens anyway)"
            )
        yield lineno, line


def read_jsonl(path: Path) -> list[str]:
    """Read a JSONL file of records into texts; errors name the file and line."""
    texts = []
    with path.open(encoding="utf-8") as handle:
        for lineno, line in _lines(handle, path):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(
                    f"{where}: not valid JSON ({err.msg}); one object per line"
                ) from err
            if not isinstance(record, dict):
                raise ValueError(f"{where}: expected a JSON object, got {type(record).__name__}")
            texts.append(record_to_text(record, where=where))
    if not texts:
        raise ValueError(f'{path}: no records; add at least one {{"text": ...}} line')
    return texts


def load_node_texts(settings: NodeSettings) -> tuple[list[str], list[str]]:
    """The node's (train, eval) texts: its ``data-path`` folder, else its synthetic partition."""
    if settings.data_path is not None:
        missing = [f for f in (TRAIN_FILE, EVAL_FILE) if not (settings.data_path / f).is_file()]
        if missing:
            raise ValueError(
                f"`data-path` {str(settings.data_path)!r} lacks {', '.join(missing)}: put the "
                "node's records there as JSONL (`fedlora data synth` writes an example)"
            )
        return read_jsonl(settings.data_path / TRAIN_FILE), read_jsonl(
            settings.data_path / EVAL_FILE
        )
    pid = settings.partition_id or 0
    train, evaluation = synth_partition(
        pid,
        n_train=settings.synth_train_examples,
        n_eval=settings.synth_eval_examples,
        seed=settings.seed,
    )
    where = f"synthetic partition {pid} ({profile_for_partition(pid)})"
    return (
        [record_to_text(r, where=where) for r in train],
        [record_to_text(r, where=where) for r in evaluation],
    )

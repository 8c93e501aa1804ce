"""Node data: JSONL files (or the embedded synthetic default) -> training texts.

A record is one JSON object per line, either ``{"text": ...}`` or
``{"instruction": ..., "response": ...}`` (optionally with ``"input"``). Torch-free.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from client.data.synth import EVAL_FILE, TRAIN_FILE, profile_for_partition, synth_partition
from client.settings import NodeSettings


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


def read_jsonl(path: Path) -> list[str]:
    """Read a JSONL file of records into texts; errors name the file and line."""
    texts = []
    with path.open(encoding="utf-8") as handle:
        for lineno, line in enumerate(handle, start=1):
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

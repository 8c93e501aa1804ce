"""JSONL node data: accepted record shapes and errors that name the file and line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from client.data.records import read_jsonl, record_to_text


def _write(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_text_and_instruction_records(tmp_path: Path) -> None:
    path = _write(tmp_path / "d.jsonl", [
        json.dumps({"text": "Pt 67F, chest pain."}),
        "",
        json.dumps({"instruction": "Summarise", "input": "BP 120/80", "response": "Normal BP."}),
        json.dumps({"instruction": "Flag?", "response": "no"}),
    ])  # fmt: skip
    assert read_jsonl(path) == [
        "Pt 67F, chest pain.",
        "### Instruction:\nSummarise\nBP 120/80\n### Response:\nNormal BP.",
        "### Instruction:\nFlag?\n### Response:\nno",
    ]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{not json", r"d\.jsonl:2: not valid JSON"),
        ("[1, 2]", r"d\.jsonl:2: expected a JSON object"),
        (json.dumps({"prompt": "x"}), r"d\.jsonl:2: record has keys \['prompt'\]"),
    ],
)
def test_bad_lines_name_file_and_line(tmp_path: Path, line: str, message: str) -> None:
    path = _write(tmp_path / "d.jsonl", [json.dumps({"text": "ok"}), line])
    with pytest.raises(ValueError, match=message):
        read_jsonl(path)


def test_empty_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no records"):
        read_jsonl(_write(tmp_path / "e.jsonl", [""]))


def test_record_to_text_names_where() -> None:
    with pytest.raises(ValueError, match="node-3"):
        record_to_text({"response": "x"}, where="node-3")


def test_aggregation_settings_and_cli_import_without_torch() -> None:
    code = (
        "import sys, strategies.registry, strategies.math.flora, strategies.math.lowrank, "
        "server.run.settings, "
        "server.cli.main, client.settings, client.data.synth, client.data.records; "
        "bad = [m for m in ('torch', 'transformers', 'peft', 'opacus') if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_a_record_past_the_size_limit_is_named_by_file_and_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from client.data import records

    monkeypatch.setattr(records, "MAX_RECORD_CHARS", 100)
    path = tmp_path / "train.jsonl"
    path.write_text('{"text": "short"}\n' + '{"text": "' + "x" * 500 + '"}\n')
    with pytest.raises(ValueError, match=r"train.jsonl:2: a record longer than 100 characters"):
        read_jsonl(path)
    path.write_text('{"text": "' + "y" * 80 + '"}\n{"text": "ok"}')  # under it, no final newline
    assert read_jsonl(path) == ["y" * 80, "ok"]

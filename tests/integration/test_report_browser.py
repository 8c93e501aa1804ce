"""The run report renders in a real browser, offline (skips without Chromium, except in CI)."""

from __future__ import annotations

from pathlib import Path

from server.report.html import write_report
from tests.browser import dump_dom
from tests.unit.test_report import RECORDS, _write_run


def test_report_renders_offline_in_chromium(tmp_path: Path) -> None:
    report = write_report(_write_run(tmp_path / "run", RECORDS, adapter=True))
    dom = dump_dom(report.as_uri())
    assert "eval loss per node" in dom
    assert 'data-name="h-a"' in dom and 'data-name="b-b"' in dom
    assert "norm 1e9" in dom  # the refusal table

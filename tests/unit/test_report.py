"""The run report: SVG charts, the run view read from records, the self-contained page."""

from __future__ import annotations

import json
import math
import os
import re
import time
from pathlib import Path

import pytest

from server.report.html import report_html, write_report
from server.report.svg import line_chart, nice_ticks
from server.report.view import run_view


def test_nice_ticks_cover_the_range_in_round_steps() -> None:
    assert nice_ticks(3.2, 5.1) == [3.0, 3.5, 4.0, 4.5, 5.0, 5.5]
    assert nice_ticks(0, 10) == [0.0, 5.0, 10.0]
    assert nice_ticks(0, 100, count=11) == [float(10 * i) for i in range(11)]
    assert nice_ticks(0, 2, integer=True) == [0.0, 1.0, 2.0]  # no half rounds
    assert nice_ticks(7, 7) == [6.0, 6.5, 7.0, 7.5, 8.0]  # one value: a band around it
    with pytest.raises(ValueError, match="not finite"):
        nice_ticks(0, math.inf)


def test_line_chart_draws_each_series_skips_gaps_and_escapes_names() -> None:
    svg = line_chart(
        {"a<script>": [(0, 1.0), (1, 0.5)], "b": [(0, 2.0), (1, math.nan), (2, 1.0)]},
        title="eval & loss",
    )
    assert svg.startswith("<svg") and svg.endswith("</svg>")
    assert "<script>" not in svg and "a&lt;script&gt;" in svg and "eval &amp; loss" in svg
    assert svg.count("<polyline") == 2
    assert svg.count("<circle") == 4  # the NaN point is a gap, not a zero
    assert "no data" in line_chart({"x": []}, title="t")


def _node(loss: float | None, **extra: object) -> dict[str, object]:
    return {"eval_loss": loss, "rank": 4, "rejected": None, "dp_mode": "none", **extra}


def _write_run(folder: Path, records: list[dict[str, object]], *, adapter: bool) -> Path:
    folder.mkdir(parents=True)
    settings = {"strategy": "flora", "num_rounds": 3, "privacy": {"max_epsilon": 8.0}}
    (folder / "settings.json").write_text(json.dumps(settings))
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    if adapter:
        (folder / "adapter").mkdir()
        (folder / "adapter" / "adapter_model.safetensors").write_bytes(b"x")
    return folder


RECORDS: list[dict[str, object]] = [
    {"round": 0, "nodes": {"h-a": _node(5.0), "b-b": _node(4.0)}, "elapsed_s": 1.0},
    {"round": 1, "global_rank": 12, "recompress_error": 0.0, "bytes_up": 1000, "bytes_down": 0,
     "nodes": {"h-a": _node(4.0, dp_mode="dp-sgd", dp_epsilon_record=1.5, dp_delta=1e-5),
               "b-b": {"eval_loss": 3.5, "rank": None, "rejected": "norm 1e9 > max-factor-norm"}},
     "elapsed_s": 9.5},
]  # fmt: skip


def test_run_view_reads_series_privacy_refusals_and_status(tmp_path: Path) -> None:
    view = run_view(_write_run(tmp_path / "r1", RECORDS, adapter=True))
    assert (view.status, view.round, view.num_rounds, view.strategy) == ("finished", 1, 3, "flora")
    assert view.eval_loss == {"b-b": [(0.0, 4.0), (1.0, 3.5)], "h-a": [(0.0, 5.0), (1.0, 4.0)]}
    assert view.global_rank == [(1.0, 12.0)] and view.bytes_up == [(1.0, 1000.0)]
    assert [(r.round, r.node) for r in view.refusals] == [(1, "b-b")]
    privacy = {p.node: p for p in view.privacy}
    assert privacy["h-a"].epsilon_record == 1.5 and privacy["h-a"].budget == 8.0
    assert privacy["h-a"].epsilon_institution is None  # dp-sgd: no per-institution guarantee
    assert privacy["b-b"].budget is None  # no privacy: no budget to show
    assert view.elapsed_s == 9.5


def test_an_estimated_truncation_error_is_shown_with_its_standard_error(tmp_path: Path) -> None:
    # the range route writes recompress_error_sd; the chart's title gives the last round's
    # estimate as ≈x ± sd, and a certified error (no sd) stays a plain title
    estimated = [*RECORDS, {**RECORDS[1], "round": 2, "recompress_error": 0.1234,
                            "recompress_error_sd": 4.1e-4}]  # fmt: skip
    view = run_view(_write_run(tmp_path / "est", estimated, adapter=False))
    assert view.trunc_error_sd == [(2.0, 4.1e-4)]
    assert "recompression error (rel. Frobenius); round 2: ≈1.2e-01 ± 4e-04" in report_html(view)
    plain = report_html(run_view(_write_run(tmp_path / "exact", RECORDS, adapter=False)))
    assert "recompression error (rel. Frobenius)<" in plain and "±" not in plain


def test_run_status_running_interrupted_stopped(tmp_path: Path) -> None:
    running = _write_run(tmp_path / "run", RECORDS, adapter=False)
    assert run_view(running).status == "running"
    old = time.time() - 3600
    os.utime(running / "metrics.jsonl", (old, old))
    os.utime(running, (old, old))
    assert run_view(running).status == "interrupted"
    stopped = [*RECORDS, {"round": 1, "nodes": {}, "stopped": "2 valid replies < min-replies 3"}]
    view = run_view(_write_run(tmp_path / "stop", stopped, adapter=False))
    assert view.status == "stopped" and view.stopped and "min-replies" in view.stopped


def test_a_torn_last_line_is_skipped_not_fatal(tmp_path: Path) -> None:
    folder = _write_run(tmp_path / "torn", RECORDS, adapter=False)
    with (folder / "metrics.jsonl").open("a") as handle:
        handle.write('{"round": 2, "nodes": {"h-')  # a crash mid-write
    assert run_view(folder).round == 1


def test_report_is_self_contained_and_shows_the_charts(tmp_path: Path) -> None:
    folder = _write_run(tmp_path / "r2", RECORDS, adapter=True)
    path = write_report(folder)
    html = path.read_text()
    assert path.name == "report.html"
    assert "<script" not in html and "http://" not in html.replace('xmlns="http://www.w3.org', "")
    assert re.search(r"<svg[^>]*>.*eval loss per node", html)
    assert 'data-name="h-a"' in html and 'data-name="b-b"' in html
    assert "norm 1e9" in html and "1.500" in html  # a refusal and an ε
    assert report_html(run_view(folder)) == html

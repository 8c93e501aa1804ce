"""HTML for people: one self-contained page per run (``RUN_DIR/report.html``), and the pieces the
dashboard composes. Inline CSS and SVG only: no script, no font, no CDN — it opens offline."""

from __future__ import annotations

from collections.abc import Container, Mapping, Sequence
from html import escape
from pathlib import Path

from common.files import write_atomic
from server.report.svg import line_chart
from server.report.view import REPORT_FILE, RunView, run_view

CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#222;max-width:1240px}
h1{font-size:20px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 6px}
h3{font-size:15px;margin:16px 0 4px}
.muted{color:#666}.charts{display:flex;flex-wrap:wrap;gap:12px}
.chart{border:1px solid #ddd;border-radius:4px;background:#fff;font-size:11px}
.chart-title{font-weight:600;font-size:12px}
table{border-collapse:collapse;margin:6px 0}
td,th{border-bottom:1px solid #ddd;padding:3px 10px;text-align:left}
th{background:#f4f4f4}.status-online,.status-finished{color:#067d2f}
.status-revoked,.status-stopped{color:#b00}
.status-running{color:#0a58ca}.status-interrupted{color:#a15c00}
"""


def page(title: str, body: str, *, refresh_s: int | None = None) -> str:
    """A whole HTML document; ``refresh_s`` makes the browser reload it (dashboard polling)."""
    refresh = f'<meta http-equiv="refresh" content="{refresh_s}">' if refresh_s else ""
    return (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">{refresh}'
        f"<title>{escape(title)}</title><style>{CSS}</style></head><body>{body}</body></html>"
    )


def table(
    headers: Sequence[str], rows: Sequence[Sequence[str]], *, raw: Container[int] = ()
) -> str:
    """An HTML table of escaped cells; columns in ``raw`` hold HTML made by this package."""
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = "".join(
        "<tr>"
        + "".join(f"<td>{c if i in raw else escape(c)}</td>" for i, c in enumerate(row))
        + "</tr>"
        for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def status_badge(status: str) -> str:
    return f'<span class="status-{escape(status)}">{escape(status)}</span>'


def _privacy(view: RunView) -> str:
    if all(p.mode == "none" for p in view.privacy):
        return "<h3>Privacy</h3><p class='muted'>no node trained with differential privacy</p>"

    def show(value: float | None, fmt: str) -> str:
        return "—" if value is None else format(value, fmt)

    rows = [
        [
            p.node,
            p.mode,
            show(p.epsilon_record, ".3f"),
            show(p.epsilon_institution, ".3f"),
            show(p.delta, "g"),
            show(p.budget, "g"),
        ]
        for p in view.privacy
    ]
    head = ["node", "mode", "ε per record", "ε per institution", "δ", "budget (run)"]
    return "<h3>Privacy: ε spent per node</h3>" + table(head, rows)


def _refusals(view: RunView) -> str:
    if not view.refusals:
        return "<h3>Refusals</h3><p class='muted'>none: every reply was used</p>"
    rows = [[str(r.round), r.node, r.reason] for r in view.refusals]
    return "<h3>Refusals</h3>" + table(["round", "node", "why"], rows)


def _error_title(view: RunView) -> str:
    """The truncation error chart's title; where the last round's error is estimated (the
    range route), that estimate and its standard error: ``round 3: ≈1.2e-03 ± 4e-06``."""
    title = "recompression error (rel. Frobenius)"
    if not (view.trunc_error and view.trunc_error_sd):
        return title
    (rnd, err), (sd_rnd, sd) = view.trunc_error[-1], view.trunc_error_sd[-1]
    if sd_rnd != rnd or not sd > 0:
        return title
    return f"{title}; round {rnd:.0f}: ≈{err:.1e} ± {sd:.0e}"


def run_section(view: RunView, *, links: Mapping[str, str] | None = None) -> str:
    """One run: status line, charts, privacy and refusals; ``links`` (label -> URL) below."""
    status = status_badge(view.status)
    stopped = f" — {escape(view.stopped)}" if view.stopped else ""
    head = (
        f'<h2 id="run-{escape(view.run_id)}">Run {escape(view.run_id)}</h2>'
        f"<p>{status}{stopped} · round {view.round} of {view.num_rounds} · strategy "
        f"<b>{escape(view.strategy)}</b> · {view.elapsed_s:.0f} s</p>"
    )
    charts = [
        line_chart(view.eval_loss, title="eval loss per node", y_label="loss"),
        line_chart({"global rank": view.global_rank}, title="global adapter rank"),
        line_chart({"truncation error": view.trunc_error}, title=_error_title(view)),
        line_chart(
            {
                "up": [(x, y / 1e3) for x, y in view.bytes_up],
                "down": [(x, y / 1e3) for x, y in view.bytes_down],
            },
            title="LoRA factor bytes per round",
            y_label="kB",
        ),
    ]
    anchors = " · ".join(
        f'<a href="{escape(url)}">{escape(label)}</a>' for label, url in (links or {}).items()
    )
    return (
        head
        + f'<div class="charts">{"".join(charts)}</div>'
        + _privacy(view)
        + _refusals(view)
        + (f"<p>{anchors}</p>" if anchors else "")
    )


def report_html(view: RunView) -> str:
    """The run report: a self-contained page (no links out, no script)."""
    body = (
        f"<h1>fedlora run {escape(view.run_id)}</h1>"
        '<p class="muted">Written by fedlora from this run\'s records (metrics.jsonl); it holds no '
        "node data, keys or tokens.</p>" + run_section(view)
    )
    return page(f"fedlora run {view.run_id}", body)


def write_report(run_dir: Path) -> Path:
    """Write ``run_dir/report.html`` from the run's records (atomically); return its path."""
    path = run_dir / REPORT_FILE
    write_atomic(path, report_html(run_view(run_dir)).encode("utf-8"))
    return path

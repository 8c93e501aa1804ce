"""The dashboard's pages, composed from the run report's pieces (server/report/html.py)."""

from __future__ import annotations

from html import escape
from pathlib import Path

from server.dashboard.state import flower_nodes, node_rows, runs
from server.operator.federation_dir import FederationDir
from server.report.html import page, run_section, status_badge, table
from server.report.view import REPORT_FILE, RunView, run_view
from server.run.runlog import METRICS_FILE

NEVER_SHOWN = (
    "Read-only. It never shows node data, keys or tokens: only what the runs recorded "
    "(losses, ranks, bytes, ε) and the enrollment registry."
)


def _links(view: RunView, suffix: str) -> dict[str, str]:
    base = f"/runs/{view.run_id}"
    links = {"metrics.jsonl": f"{base}/{METRICS_FILE}{suffix}"}
    if view.has_adapter:
        links["adapter (zip)"] = f"{base}/adapter.zip{suffix}"
    if (view.path / REPORT_FILE).is_file():
        links["report.html"] = f"{base}/{REPORT_FILE}{suffix}"
    return links


def _nodes(fed: FederationDir) -> str:
    flower, note = flower_nodes(fed)
    rows = [
        [r.name, status_badge(r.status), r.enrolled_at, r.last_seen, r.fingerprint]
        for r in node_rows(fed, flower)
    ]
    head = ["node", "status", "enrolled (UTC)", "last seen", "key fingerprint"]
    body = table(head, rows, raw={1})  # the status badge is HTML (escaped by status_badge)
    if not rows:
        body = "<p class='muted'>no nodes enrolled yet: <code>fedlora server invite</code></p>"
    return "<h2>Nodes</h2>" + body + (f"<p class='muted'>{escape(note)}</p>" if note else "")


def _runs(views: list[RunView], suffix: str) -> str:
    if not views:
        return "<h2>Runs</h2><p class='muted'>no runs yet: <code>fedlora run --dir FED</code></p>"
    rows = [
        [
            f'<a href="/runs/{escape(v.run_id)}{escape(suffix)}">{escape(v.run_id)}</a>',
            status_badge(v.status),
            f"{v.round} of {v.num_rounds}",
            v.strategy,
            f"{v.elapsed_s:.0f} s",
            str(len(v.refusals)),
        ]
        for v in views
    ]
    head = ["run", "status", "round", "strategy", "elapsed", "refusals"]
    return "<h2>Runs</h2>" + table(head, rows, raw={0, 1})  # a link and a badge: HTML


def overview_page(fed: FederationDir, *, suffix: str, refresh_s: int) -> str:
    """Nodes, the runs, and the newest run's charts, privacy and refusals."""
    views = runs(fed)
    newest = run_section(views[0], links=_links(views[0], suffix)) if views else ""
    body = (
        f"<h1>fedlora federation <span class='muted'>{escape(fed.root.name)}</span></h1>"
        f"<p class='muted'>{NEVER_SHOWN} Updates every {refresh_s} s.</p>"
        + _nodes(fed)
        + _runs(views, suffix)
        + newest
    )
    return page("fedlora dashboard", body, refresh_s=refresh_s)


def run_page(folder: Path, *, suffix: str, refresh_s: int) -> str:
    """One run, with its downloads; reloads while the run is going."""
    view = run_view(folder)
    back = f'<p><a href="/{escape(suffix)}">← federation</a></p>'
    refresh = refresh_s if view.status == "running" else None
    body = back + run_section(view, links=_links(view, suffix))
    return page(f"fedlora run {view.run_id}", body, refresh_s=refresh)

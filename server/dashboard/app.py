"""The dashboard's HTTP server: the standard library's ``ThreadingHTTPServer``, read-only.

Plain HTTP on loopback, on purpose: traffic that never leaves the host gains nothing from TLS with
a certificate no browser trusts, and every request must carry the access token
(``?token=`` or ``Authorization: Bearer``), so other local users are refused (401 without a token,
403 with a wrong one) before anything is read. Pages are server-rendered HTML with inline SVG
charts and no script; the overview reloads itself every few seconds while the operator watches.

Routes (GET/HEAD only; nothing changes the federation):
``/`` nodes, runs, the newest run's charts · ``/runs/<id>`` one run ·
``/runs/<id>/metrics.jsonl`` · ``/runs/<id>/adapter.zip`` · ``/runs/<id>/report.html``.
"""

from __future__ import annotations

import io
import threading
import zipfile
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, quote, urlsplit

from server.dashboard.access import Access, token_matches
from server.dashboard.pages import overview_page, run_page
from server.dashboard.state import find_run
from server.operator.federation_dir import FederationDir
from server.report.view import ADAPTER_DIR, REPORT_FILE
from server.run.runlog import METRICS_FILE

REFRESH_S = 5
HEADERS = {
    "Cache-Control": "no-store",
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; img-src data:",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
}


def _zip_folder(folder: Path) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                archive.write(path, Path(folder.name) / path.relative_to(folder))
    return buffer.getvalue()


def _handler(fed: FederationDir, access: Access) -> type[BaseHTTPRequestHandler]:
    suffix = f"?token={quote(access.token)}"

    class Handler(BaseHTTPRequestHandler):
        server_version = "fedlora-dashboard"
        sys_version = ""

        def log_message(self, format: str, *args: object) -> None:
            """Quiet: request lines would carry the token."""

        def _send(self, status: int, body: bytes, content_type: str, **extra: str) -> None:
            self.send_response(status)
            for key, value in {**HEADERS, **extra}.items():
                self.send_header(key, value)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _text(self, status: int, text: str) -> None:
            self._send(status, text.encode(), "text/plain; charset=utf-8")

        def _authorised(self) -> bool:
            query = parse_qs(urlsplit(self.path).query)
            tokens = query.get("token")
            given = tokens[0] if tokens else None
            header = self.headers.get("Authorization", "")
            if given is None and header.startswith("Bearer "):
                given = header.removeprefix("Bearer ").strip()
            if given is None:
                self._text(
                    401,
                    "401: this dashboard needs its access token; "
                    "`fedlora server dashboard --dir FED` prints the URL\n",
                )
                return False
            if not token_matches(given, access.token):
                self._text(403, "403: wrong access token\n")
                return False
            return True

        def do_GET(self) -> None:
            if not self._authorised():
                return
            parts = [p for p in urlsplit(self.path).path.split("/") if p]
            if not parts:
                html = overview_page(fed, suffix=suffix, refresh_s=REFRESH_S)
                self._send(200, html.encode(), "text/html; charset=utf-8")
            elif parts[0] == "runs" and len(parts) in (2, 3):
                self._run(parts[1], parts[2] if len(parts) == 3 else None)
            else:
                self._text(404, "404: no such page\n")

        do_HEAD = do_GET

        def _run(self, run_id: str, item: str | None) -> None:
            folder = find_run(fed, run_id)
            if folder is None:
                self._text(404, f"404: no run {run_id!r}\n")
            elif item is None:
                html = run_page(folder, suffix=suffix, refresh_s=REFRESH_S)
                self._send(200, html.encode(), "text/html; charset=utf-8")
            elif item == METRICS_FILE and (folder / METRICS_FILE).is_file():
                self._send(
                    200,
                    (folder / METRICS_FILE).read_bytes(),
                    "application/x-ndjson",
                    **{"Content-Disposition": f'attachment; filename="{run_id}-metrics.jsonl"'},
                )
            elif item == "adapter.zip" and (folder / ADAPTER_DIR).is_dir():
                self._send(
                    200,
                    _zip_folder(folder / ADAPTER_DIR),
                    "application/zip",
                    **{"Content-Disposition": f'attachment; filename="{run_id}-adapter.zip"'},
                )
            elif item == REPORT_FILE and (folder / REPORT_FILE).is_file():
                self._send(200, (folder / REPORT_FILE).read_bytes(), "text/html; charset=utf-8")
            else:
                self._text(404, f"404: run {run_id!r} has no {item!r} (yet)\n")

        def _refuse_method(self) -> None:
            if self._authorised():
                self._text(HTTPStatus.METHOD_NOT_ALLOWED, "405: the dashboard is read-only\n")

        do_POST = do_PUT = do_DELETE = do_PATCH = _refuse_method

    return Handler


class Dashboard:
    """The dashboard server in a background thread; :meth:`stop` ends it."""

    def __init__(self, fed_root: Path, access: Access) -> None:
        self.access = access
        try:
            self.server = ThreadingHTTPServer(
                (access.host, access.port), _handler(FederationDir(fed_root), access)
            )
        except OSError as err:
            raise OSError(
                f"`--dashboard-port` {access.port} cannot be used ({err.strerror}): pick a free "
                "port, or 0 to run without the dashboard"
            ) from None
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def start(self) -> Dashboard:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)

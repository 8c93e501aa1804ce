"""The operator's dashboard and the run report, looked at in headless Chromium.

A real 2-node federation over TLS on loopback (real processes): the dashboard shows both nodes
online, refuses a request without its token, and after a 2-round run shows the eval-loss chart;
the run's ``report.html`` opens offline (file://) with the same chart. ``FEDLORA_SCREENSHOTS=DIR``
keeps the screenshots (the ones in docs/img/ were made this way).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from tests.browser import dump_dom, screenshot
from tests.deploy_harness import federation_at, fedlora, run, run_folder

pytestmark = pytest.mark.slow
NODES = {"hospital-a": ("hospital-cardiology", 4), "bank-b": ("bank-transactions", 8)}


def _shots(tmp_path: Path) -> Path:
    return Path(os.environ.get("FEDLORA_SCREENSHOTS") or tmp_path)


def test_dashboard_and_report_in_a_browser(tmp_path: Path) -> None:
    with federation_at(tmp_path) as federation:
        for name, (data, rank) in NODES.items():
            federation.join_and_start(name, data, rank)
        federation.wait_online(*NODES)
        printed = fedlora("server", "dashboard", "--dir", federation.fed)
        assert printed.returncode == 0, printed.stderr
        url = printed.stdout.strip()
        assert url.startswith(f"http://127.0.0.1:{federation.dashboard_port}/?token=")

        refused = dump_dom(url.split("?")[0])
        assert "401" in refused and "hospital-a" not in refused
        wrong = dump_dom(url.split("?")[0] + "?token=not-the-token")
        assert "403" in wrong and "hospital-a" not in wrong
        before = dump_dom(url)
        for name in NODES:
            assert re.search(rf"<td>{name}</td><td><span class=\"status-online\">", before), name

        done = run(federation, "num-server-rounds=2", "min-nodes=2")
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
        after = dump_dom(url)
        assert "eval loss per node" in after and "status-finished" in after
        for name in NODES:
            assert f'data-name="{name}"' in after  # a line in the eval-loss chart per node
        screenshot(url, _shots(tmp_path) / "dashboard.png")

        report = Path(run_folder(done.stdout)) / "report.html"
        offline = dump_dom(report.as_uri())
        assert "eval loss per node" in offline
        for name in NODES:
            assert f'data-name="{name}"' in offline
        screenshot(report.as_uri(), _shots(tmp_path) / "report.png")

"""The dashboard served in-process over real HTTP: the token, the pages, the downloads."""

from __future__ import annotations

import io
import json
import urllib.error
import urllib.request
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from server.dashboard.access import ACCESS_FILE, load_access, new_access
from server.dashboard.app import Dashboard
from server.operator.federation_dir import init_federation
from tests.deploy_harness import free_ports


@pytest.fixture
def dashboard(tmp_path: Path) -> Iterator[Dashboard]:
    fed = tmp_path / "FED"
    init_federation(fed, "127.0.0.1")
    run = fed / "runs" / "20261129-120000"
    run.mkdir(parents=True)
    (run / "settings.json").write_text(json.dumps({"strategy": "flora", "num_rounds": 1}))
    record = {"round": 1, "global_rank": 4, "nodes": {"hospital-a": {"eval_loss": 2.5}}}
    (run / "metrics.jsonl").write_text(json.dumps(record) + "\n")
    (run / "adapter").mkdir()
    (run / "adapter" / "adapter_config.json").write_text("{}")
    server = Dashboard(fed, new_access(fed, port=free_ports(1)[0])).start()
    try:
        yield server
    finally:
        server.stop()


def _get(url: str, method: str = "GET", headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def test_every_request_needs_the_token(dashboard: Dashboard) -> None:
    base = f"http://127.0.0.1:{dashboard.access.port}"
    for path in ("/", "/runs/20261129-120000", "/runs/20261129-120000/metrics.jsonl", "/x"):
        assert _get(base + path)[0] == 401
        assert _get(base + path + "?token=wrong")[0] == 403
    assert _get(base + "/", method="POST")[0] == 401
    _, body = _get(base + "/")
    assert b"hospital-a" not in body and b"fedlora server dashboard" in body


def test_pages_and_downloads_with_the_token(dashboard: Dashboard) -> None:
    url = dashboard.access.url
    code, body = _get(url)
    assert code == 200
    page = body.decode()
    assert "20261129-120000" in page and 'data-name="hospital-a"' in page
    assert "online status unknown" in page  # no SuperLink here: said, not a crash
    base, token = url.split("/?token=")
    bearer = {"Authorization": f"Bearer {token}"}
    assert _get(f"{base}/runs/20261129-120000", headers=bearer)[0] == 200
    code, metrics = _get(f"{base}/runs/20261129-120000/metrics.jsonl?token={token}")
    assert code == 200 and json.loads(metrics)["global_rank"] == 4
    code, archive = _get(f"{base}/runs/20261129-120000/adapter.zip?token={token}")
    assert code == 200
    assert zipfile.ZipFile(io.BytesIO(archive)).namelist() == ["adapter/adapter_config.json"]
    assert _get(f"{base}/runs/..%2f..%2fca.key?token={token}")[0] == 404
    assert _get(f"{base}/runs/20261129-120000/../../ca.key?token={token}")[0] == 404
    assert _get(f"{base}/?token={token}", method="POST")[0] == 405  # read-only


def test_access_file_is_private(dashboard: Dashboard, tmp_path: Path) -> None:
    fed = tmp_path / "FED"
    assert (fed / ACCESS_FILE).stat().st_mode & 0o777 == 0o600
    assert load_access(fed) == dashboard.access
    with pytest.raises(ValueError, match="loopback only"):
        new_access(fed, port=9095, host="0.0.0.0")
    with pytest.raises(FileNotFoundError, match="fedlora server start"):
        load_access(tmp_path)

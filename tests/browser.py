"""Headless Chromium for the tests that look at a page the way a person does.

Debian's ``chromium`` (``.ci/run`` installs it). Where it is missing, the browser tests skip with
the reason, unless ``FEDLORA_REQUIRE_BROWSER=1`` (set by CI), where they fail instead.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--hide-scrollbars",
)  # fmt: skip


def chromium() -> str:
    """The browser's path; skip (or fail under CI) when there is none."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    reason = "needs Debian's chromium (apt install chromium); .ci/run installs it"
    if os.environ.get("FEDLORA_REQUIRE_BROWSER") == "1":
        pytest.fail(reason)
    pytest.skip(reason)


def _run(url: str, *extra: str) -> subprocess.CompletedProcess[str]:
    with tempfile.TemporaryDirectory(prefix="chromium-") as profile:
        return subprocess.run(
            [chromium(), *FLAGS, f"--user-data-dir={profile}", *extra, url],
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip


def dump_dom(url: str) -> str:
    """The page's DOM after it loaded, as the browser serialises it."""
    done = _run(url, "--dump-dom")
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def screenshot(url: str, path: Path, *, width: int = 1280, height: int = 1400) -> Path:
    """A PNG of the page as a person would see it."""
    done = _run(url, f"--screenshot={path}", f"--window-size={width},{height}")
    assert done.returncode == 0 and path.is_file(), done.stderr[-2000:]
    return path

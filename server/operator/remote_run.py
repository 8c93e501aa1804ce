"""``fedlora run``: submit the fedlora app to the running server and follow it to the end.

The run config is checked here first (the same typed settings the ServerApp builds), then
``flwr run APP fedlora --stream`` submits it through the Control API (loopback, TLS); the
ServerApp's progress lines are streamed back, and the exit code is the run's real outcome
(``flwr run --stream`` itself exits 0 even when the run fails).
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from common.config import DEFAULT_RUN_CONFIG, ConfigValue
from common.daemon import bin_dir, daemon_env
from server.operator.federation_dir import FederationConfig, FederationDir
from server.operator.flower_control import RunStatus, run_status
from server.run.settings import server_settings

CONNECTION = "fedlora"
_STARTED = re.compile(r"Successfully started run (\d+)")
STATUS_WAIT_S = 60.0


def app_dir() -> Path:
    """The Flower app fedlora runs: the project folder holding ``pyproject.toml``."""
    root = Path(__file__).resolve().parents[2]
    pyproject = root / "pyproject.toml"
    if not pyproject.is_file() or "[tool.flwr.app]" not in pyproject.read_text():
        raise FileNotFoundError(
            f"no Flower app at {root}: `fedlora run` submits the fedlora project folder; "
            "install fedlora from its repository with `pip install -e .` (see README)"
        )
    return root


def write_connection(fed: FederationDir, config: FederationConfig) -> None:
    """``FED/flower/config.toml``: how the ``flwr`` CLI reaches this federation's SuperLink."""
    control = fed.control(config)
    lines = [
        "[superlink]",
        f'default = "{CONNECTION}"',
        "",
        f"[superlink.{CONNECTION}]",
        f'address = "{control.address}"',
    ]
    if control.ca_cert is None:
        lines.append("insecure = true")
    else:
        lines.append(f"root-certificates = {json.dumps(str(control.ca_cert.resolve()))}")
    fed.flower_home.mkdir(mode=0o700, exist_ok=True)
    (fed.flower_home / "config.toml").write_text("\n".join(lines) + "\n")
    store_cli_token(fed.flower_home / "credentials.yaml", control.address, control.token)


def store_cli_token(path: Path, address: str, token: str) -> None:
    """Let the ``flwr`` CLI send the operator token: Flower's CLI sends the access token of
    its account-auth credential store as ``Authorization: Bearer``; fedlora's guard checks it.
    The refresh token is a placeholder: the guard's 401 never asks for a refresh."""
    from flwr.cli.constant import (
        ACCESS_TOKEN_STORE_KEY,
        AUTHN_TYPE_STORE_KEY,
        REFRESH_TOKEN_STORE_KEY,
    )
    from flwr.common.constant import AuthnType
    from flwr.supercore.credential_store.file_credential_store import FileCredentialStore

    store = FileCredentialStore(file_path=path)
    if store.get(ACCESS_TOKEN_STORE_KEY % address) == token.encode():
        return
    store.set(AUTHN_TYPE_STORE_KEY % address, AuthnType.OIDC.encode())
    store.set(ACCESS_TOKEN_STORE_KEY % address, token.encode())
    store.set(REFRESH_TOKEN_STORE_KEY % address, b"fedlora-static-token")


def toml_pairs(config: Mapping[str, ConfigValue]) -> str:
    """``key=value`` pairs as ``flwr run --run-config`` reads them."""

    def value(v: ConfigValue) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        return json.dumps(v) if isinstance(v, str) else repr(v)

    return " ".join(f"{k}={value(v)}" for k, v in config.items())


def submit(
    root: Path,
    overrides: Mapping[str, ConfigValue],
    *,
    verbose: bool = False,
    echo: Callable[[str], None] = print,
) -> int:
    """Run one federation on the running server; 0 when it completed, 1 otherwise."""
    fed = FederationDir(root)
    config = fed.load()
    run_config = {
        "run-dir": str(fed.runs.resolve()),
        **overrides,
        # A reply must carry the name its node was enrolled as (server/run/identities.py).
        "enrolled-nodes": str(fed.registry().names_path.resolve()),
    }
    server_settings({**DEFAULT_RUN_CONFIG, **run_config})  # bad values stop here, all named
    write_connection(fed, config)
    argv = [
        str(bin_dir() / "flwr"),
        "run",
        str(app_dir()),
        CONNECTION,
        "--stream",
        "--run-config",
        toml_pairs(run_config),
    ]
    env = daemon_env({"FLWR_HOME": str(fed.flower_home)})
    run_id = None
    with subprocess.Popen(
        argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
    ) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            found = _STARTED.search(line)
            run_id = int(found.group(1)) if found else run_id
            if verbose or found or not _flower_noise(line):
                echo(line.rstrip("\n"))
    if run_id is None:
        echo(f"[fedlora] error: the run was not started (`flwr run` exited {proc.returncode})")
        return 1
    status = _final_status(fed, config, run_id)
    if status.sub_status != "completed":
        details = f": {status.details}" if status.details else ""
        echo(f"[fedlora] error: run {run_id} {status.status}:{status.sub_status}{details}")
        return 1
    echo(f"[fedlora] run {run_id} completed; run folders under {run_config['run-dir']}")
    return 0


def _flower_noise(line: str) -> bool:
    """Flower's own INFO/DEBUG log lines (shown with ``--verbose``)."""
    return "INFO" in line[:16] or "DEBUG" in line[:16] or not line.strip()


def _final_status(fed: FederationDir, config: FederationConfig, run_id: int) -> RunStatus:
    deadline = time.monotonic() + STATUS_WAIT_S
    while True:
        status = run_status(fed.control(config), run_id)
        if status.status == "finished" or time.monotonic() > deadline:
            return status
        time.sleep(1.0)

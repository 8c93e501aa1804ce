"""Only the operator controls the federation: real `fedlora server start` on loopback, probed
as another local user (`runuser -u nobody`), and a second `server start` on the same folder.

Every process started here carries the harness's marker and is ended by the module, also on
failure.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from server.operator.federation_dir import FederationDir
from server.operator.flower_control import list_nodes
from server.operator.remote_run import write_connection
from tests.deploy_harness import Daemons, Federation, fedlora, free_ports

pytestmark = pytest.mark.slow

SYSTEM_PYTHON = shutil.which("python3", path="/usr/bin:/bin")
# Runs as `nobody`: POST each path with no token, and with a wrong one; print the statuses.
PROBE = """
import json, ssl, sys, urllib.error, urllib.request
ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE
out = {}
for path in json.loads(sys.argv[2]):
    for label, headers in (("none", {}), ("wrong", {"Authorization": "Bearer guessed"})):
        req = urllib.request.Request(sys.argv[1] + path, data=b"", method="POST", headers={
            "content-type": "application/protobuf", **headers})
        try:
            out[label + " " + path] = urllib.request.urlopen(req, context=ctx, timeout=20).status
        except urllib.error.HTTPError as err:
            out[label + " " + path] = err.code
try:
    open(sys.argv[3]).read(); out["token readable"] = True
except OSError:
    out["token readable"] = False
print(json.dumps(out))
"""


def _as_nobody(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["runuser", "-u", "nobody", "--", *argv], capture_output=True, text=True, timeout=120,
        check=False, cwd="/",
    )  # fmt: skip


def _control_paths() -> list[str]:
    from flwr.superlink.routers.control import router

    paths = sorted({str(getattr(r, "path", "")) for r in router.routes} - {""})
    assert len(paths) > 20 and "/v1/control/register-node" in paths, paths
    return paths


@pytest.fixture(scope="module")
def federation(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Federation]:
    if os.geteuid() != 0 or SYSTEM_PYTHON is None or shutil.which("runuser") is None:
        pytest.skip("needs root, runuser and a system python3 to act as another local user")
    root = tmp_path_factory.mktemp("opsec")
    root.chmod(0o755)  # the test root; FED inside it must protect itself
    (root / "logs").mkdir()
    daemons = Daemons(root / "logs")
    fed = Federation(root / "FED", root, tuple(free_ports(3)), daemons)  # type: ignore[arg-type]
    done = fedlora("server", "init", "--dir", fed.fed, "--host", "127.0.0.1")
    assert done.returncode == 0, done.stderr
    try:
        fed.start_server()
        yield fed
    finally:
        daemons.stop_all(force=True)


def test_every_control_route_is_refused_for_another_local_user(federation: Federation) -> None:
    _, control, _ = federation.ports
    paths = [*_control_paths(), "/docs", "/openapi.json"]
    superexec_routes = ["/v1/runtime/pull-pending-tasks", "/v1/runtime/acquire-task",
                        "/v1/runtime/claim-task"]  # fmt: skip
    assert SYSTEM_PYTHON is not None
    probe = _as_nobody(
        SYSTEM_PYTHON, "-c", PROBE, f"https://127.0.0.1:{control}",
        json.dumps(paths + superexec_routes), str(federation.fed / "operator.token"),
    )  # fmt: skip
    assert probe.returncode == 0, probe.stderr
    seen = json.loads(probe.stdout)
    assert seen.pop("token readable") is False
    assert len(seen) == 2 * len(paths + superexec_routes)
    assert {k: v for k, v in seen.items() if v != 401} == {}
    # The operator gets through: fedlora's client, and Flower's own CLI pointed at FED's
    # connection (how `fedlora run` submits).
    fed = FederationDir(federation.fed)
    assert list_nodes(fed.control(fed.load())) == []
    write_connection(fed, fed.load())
    env = {**os.environ, "FLWR_HOME": str(federation.fed / "flower"), "FLWR_TELEMETRY_ENABLED": "0"}
    flwr = Path(sys.executable).parent / "flwr"
    listed = subprocess.run([str(flwr), "ls", "fedlora"], env=env, capture_output=True,
                            text=True, timeout=120, check=False)  # fmt: skip
    assert listed.returncode == 0 and "Run ID" in listed.stdout, listed.stdout + listed.stderr


def test_state_is_private(federation: Federation) -> None:
    fed = federation.fed
    assert fed.stat().st_mode & 0o777 == 0o700
    for path in [fed / "enrollment.db", fed / "flower" / "state.db", fed / "operator.token",
                 fed / "superexec.secret", *(fed / "logs").iterdir()]:  # fmt: skip
        assert path.stat().st_mode & 0o077 == 0, path
    for folder in (fed / "flower", fed / "logs", fed / "runs"):
        assert folder.stat().st_mode & 0o777 == 0o700, folder


def test_second_server_start_is_refused_before_it_touches_anything(
    federation: Federation,
) -> None:
    config = federation.fed / "federation.json"
    before = (config.read_bytes(), config.stat().st_mtime_ns)
    other = free_ports(3)
    second = fedlora(
        "server", "start", "--dir", federation.fed, "--bind", "127.0.0.1",
        "--fleet-port", str(other[0]), "--control-port", str(other[1]),
        "--enroll-port", str(other[2]), timeout=60,
    )  # fmt: skip
    assert second.returncode != 0
    assert "already served by `fedlora server start`" in second.stderr, second.stderr
    assert "[fedlora] SuperLink" not in second.stdout  # never claimed to be up
    assert (config.read_bytes(), config.stat().st_mtime_ns) == before
    fed = FederationDir(federation.fed)
    assert list_nodes(fed.control(fed.load())) == []  # the first one still serves


def test_insecure_control_api_on_the_network_is_refused(federation: Federation) -> None:
    config = federation.fed / "federation.json"
    before = config.read_bytes()
    refused = fedlora("server", "start", "--dir", federation.fed, "--insecure",
                      "--control-host", "0.0.0.0", timeout=60)  # fmt: skip
    assert refused.returncode != 0 and "`--control-host` is '0.0.0.0' with `--insecure`" in (
        refused.stderr
    ), refused.stderr
    assert config.read_bytes() == before


def test_keys_registered_out_of_band_are_flagged(federation: Federation) -> None:
    """Flower's registered keys are reconciled with fedlora's registry: a key fedlora did not
    enroll shows as a warning, with its fingerprint; a key registered twice reads plainly."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    from server.operator.enrollment.keys import parse_node_key
    from server.operator.flower_control import ControlRefused, register_node, unregister_node

    key = ec.generate_private_key(ec.SECP384R1()).public_key()
    openssh = key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    fed = FederationDir(federation.fed)
    control = fed.control(fed.load())
    node_id = register_node(control, name="side-door", public_key=openssh.decode())
    try:
        with pytest.raises(ControlRefused, match="already registered with the federation"):
            register_node(control, name="again", public_key=openssh.decode())
        nodes = fedlora("server", "nodes", "--dir", federation.fed)
        fingerprint = parse_node_key(openssh.decode()).fingerprint
        assert (
            f"WARNING: Flower accepts node {node_id} (side-door, registered, key {fingerprint})"
            in (nodes.stdout)
        ), nodes.stdout
    finally:
        unregister_node(control, node_id)
    nodes = fedlora("server", "nodes", "--dir", federation.fed)
    assert "WARNING" not in nodes.stdout, nodes.stdout

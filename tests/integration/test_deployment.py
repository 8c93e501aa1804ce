"""The real deployment on loopback, with real processes: `fedlora server init/start/invite/nodes/
revoke`, `fedlora node join/start`, `fedlora run`, over TLS with Flower's node authentication.

Every process this module starts carries a marker in its environment (inherited by Flower's own
children); each is started in its own process group and ended by its id when the module ends,
also on failure, and the last test checks that nothing with the marker is left.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from client.node.folder import NodeDir, generate_key
from server.operator.pki import create_pki
from tests.deploy_harness import (
    RUN_TIMEOUT_S,
    Federation,
    env,
    federation_at,
    fedlora,
    free_ports,
    marked,
    run,
    run_folder,
    run_records,
    wait_for,
)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def federation(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Federation]:
    with federation_at(tmp_path_factory.mktemp("deploy")) as fed:
        yield fed


def test_init_refuses_to_overwrite_and_keys_are_private(federation: Federation) -> None:
    again = fedlora("server", "init", "--dir", federation.fed, "--host", "127.0.0.1")
    assert again.returncode != 0 and "already holds a federation" in again.stderr
    for key in ("ca.key", "server.key"):
        assert (federation.fed / key).stat().st_mode & 0o777 == 0o600


def test_bad_tokens_are_refused(federation: Federation) -> None:
    root = federation.root
    token = federation.invite("clinic-x")
    head, payload, secret = token.split(".")
    wrong_secret = f"{head}.{payload}.{secret[::-1]}"
    unknown = fedlora("node", "join", wrong_secret, "--dir", root / "x1")
    assert unknown.returncode != 0 and "unknown token" in unknown.stderr

    first = fedlora("node", "join", token, "--dir", root / "x1")
    assert first.returncode == 0, first.stderr
    assert (root / "x1" / "node.key").stat().st_mode & 0o777 == 0o600
    reused = fedlora("node", "join", token, "--dir", root / "x2")
    assert reused.returncode != 0 and "already used" in reused.stderr
    taken = fedlora("server", "invite", "--dir", federation.fed, "--name", "clinic-x")
    assert taken.returncode != 0 and "already enrolled" in taken.stderr

    short = federation.invite("clinic-y", ttl="1s")
    time.sleep(1.5)
    expired = fedlora("node", "join", short, "--dir", root / "x3")
    assert expired.returncode != 0 and "expired" in expired.stderr


def test_wrong_ca_pin_is_refused(federation: Federation, tmp_path: Path) -> None:
    import base64

    token = federation.invite("clinic-z")
    head, payload, secret = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["p"] = "sha256:" + "0" * 64  # a CA other than the server's
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    done = fedlora("node", "join", f"{head}.{forged}.{secret}", "--dir", tmp_path / "n")
    assert done.returncode != 0 and "CA pin mismatch" in done.stderr
    assert not (tmp_path / "n" / "node.json").exists()


def test_unregistered_key_cannot_take_part(federation: Federation, tmp_path: Path) -> None:
    tmp_path.mkdir(exist_ok=True)
    generate_key(NodeDir(tmp_path))  # a well-formed key the federation never registered
    fleet = federation.ports[0]
    log = tmp_path / "rogue.log"
    with log.open("wb") as out:
        rogue = subprocess.Popen(
            [str(Path(sys.executable).parent / "flower-supernode"), "--superlink",
             f"127.0.0.1:{fleet}", "--root-certificates", str(federation.fed / "ca.pem"),
             "--auth-supernode-private-key", str(tmp_path / "node.key"),
             "--port", str(free_ports(1)[0]), "--max-retries", "2"],
            env=env(), stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        code = rogue.wait(timeout=120)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(rogue.pid, signal.SIGKILL)
    assert code != 0
    assert "Failed to activate SuperNode" in log.read_text(errors="replace")


def test_two_nodes_train_over_tls_then_revoked_node_is_out(federation: Federation) -> None:
    root = federation.root
    for name, folder, rank in (("hospital-a", "hospital-cardiology", 4),
                               ("bank-b", "bank-transactions", 8)):  # fmt: skip
        joined = fedlora("node", "join", federation.invite(name), "--dir", root / name)
        assert joined.returncode == 0, joined.stderr
        federation.daemons.start(name, "node", "start", "--dir", root / name,
                                 "--data", root / "data" / folder, "--rank", str(rank))  # fmt: skip
    wait_for(
        lambda: [federation.status().get(n) for n in ("hospital-a", "bank-b")] == ["online"] * 2,
        60,
        "both nodes online",
    )

    started = time.monotonic()
    done = run(federation, "num-server-rounds=2", "min-nodes=1")
    wall = time.monotonic() - started
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "[fedlora] round 2/2" in done.stdout
    records = run_records(done.stdout)
    first, last = records[0], records[-1]
    assert set(last["nodes"]) == {"hospital-a", "bank-b"}  # type: ignore[arg-type]
    for name in ("hospital-a", "bank-b"):
        before = first["nodes"][name]["eval_loss"]  # type: ignore[index]
        after = last["nodes"][name]["eval_loss"]  # type: ignore[index]
        assert after < before, (name, before, after)
        # The node's LoRA factors reached the server: in deployment, only via the Fleet API.
        assert last["nodes"][name]["bytes_up"] > 0  # type: ignore[index]
    print(f"2-node, 2-round federation over TLS: {wall:.0f} s wall")
    # Each reply's name was checked against the name its node's key was enrolled as.
    settings = json.loads((Path(run_folder(done.stdout)) / "settings.json").read_text())
    assert settings["enrolled_nodes"] == str((federation.fed / "enrolled-nodes.json").resolve())

    # The SuperLink's state survives a restart: enrolled nodes reconnect without rejoining.
    federation.daemons.stop("server")
    federation.start_server()
    revoked = fedlora("server", "revoke", "--dir", federation.fed, "bank-b")
    assert revoked.returncode == 0, revoked.stderr
    assert federation.status()["bank-b"] == "revoked"
    # The revoked node's own `node start` says so at once (the enrollment service's NodeStatus),
    # not after minutes of the SuperLink's refusals.
    federation.daemons.stop("bank-b")
    started = time.monotonic()
    again = fedlora("node", "start", "--dir", root / "bank-b",
                    "--data", root / "data" / "bank-transactions")  # fmt: skip
    took = time.monotonic() - started
    assert again.returncode == 1, again.stdout[-2000:] + again.stderr[-2000:]
    day = time.strftime("%Y-%m-%d", time.gmtime())
    assert f"[fedlora] error: this node was revoked by the operator on {day}" in again.stdout
    assert "ask for a new invitation (fedlora node join" in again.stdout
    assert took < 30, took  # about 3 s here: the check runs before the SuperNode starts
    print(f"revoked node start exited in {took:.1f} s")
    wait_for(lambda: federation.status().get("hospital-a") == "online", 90, "reconnect")
    # The same run, resumed from its checkpoint for a third round: only the unrevoked node.
    run_dir = Path(run_folder(done.stdout))
    resumed = fedlora("run", "--dir", federation.fed, "--resume", run_dir, "--rounds", "3",
                      timeout=RUN_TIMEOUT_S)  # fmt: skip
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-2000:]
    assert "resumed after round 2" in resumed.stdout
    records = run_records(resumed.stdout)
    assert [r["round"] for r in records] == [0, 1, 2, 3]
    assert set(records[-1]["nodes"]) == {"hospital-a"}  # type: ignore[arg-type]


def test_node_start_checks_its_inputs(federation: Federation, tmp_path: Path) -> None:
    joined_dir = tmp_path / "joined"  # a node of its own: the test runs alone or in any order
    joined = fedlora("node", "join", federation.invite("clinic-checks"), "--dir", joined_dir)
    assert joined.returncode == 0, joined.stderr
    no_key = fedlora("node", "start", "--dir", tmp_path, "--data", federation.root / "data")
    assert no_key.returncode != 0 and "is not a joined node" in no_key.stderr
    moved = tmp_path / "moved-node"
    shutil.copytree(joined_dir, moved)
    (moved / "ca.pem").write_bytes((joined_dir / "ca.pem").read_bytes())  # same CA
    same = fedlora("node", "start", "--dir", moved, "--data", tmp_path)
    assert "`--data`" in same.stderr  # the CA and the server passed; the data check stops it
    other = create_pki(tmp_path / "other-federation", ["127.0.0.1"])
    (moved / "ca.pem").write_bytes(other.ca_cert.read_bytes())
    swapped = fedlora("node", "start", "--dir", moved, "--data", federation.root / "data" /
                      "bank-transactions")  # fmt: skip
    assert swapped.returncode != 0 and "is not the CA this node joined with" in swapped.stderr
    keyless = tmp_path / "keyless-node"
    shutil.copytree(joined_dir, keyless)
    (keyless / "node.key").unlink()
    no_key_file = fedlora("node", "start", "--dir", keyless, "--data", federation.root / "data")
    assert no_key_file.returncode != 0 and "has no node key" in no_key_file.stderr
    rekeyed = tmp_path / "rekeyed-node"  # a consistent key pair the federation never enrolled
    shutil.copytree(joined_dir, rekeyed)
    for name in ("node.key", "node.pub"):
        (rekeyed / name).unlink()
    generate_key(NodeDir(rekeyed))
    unknown = fedlora("node", "start", "--dir", rekeyed, "--data", federation.root / "data" /
                      "bank-transactions")  # fmt: skip
    assert unknown.returncode == 1, unknown.stdout[-2000:] + unknown.stderr[-2000:]
    assert "[fedlora] error: the server does not know this node's key" in unknown.stdout
    bad_run = fedlora("run", "--dir", federation.fed, "--config", "strategy=fedsgd")
    assert bad_run.returncode != 0 and "`strategy` is 'fedsgd'" in bad_run.stderr
    no_data = fedlora("node", "start", "--dir", joined_dir,
                      "--data", tmp_path / "missing")  # fmt: skip
    assert no_data.returncode != 0 and "`--data`" in no_data.stderr


def test_server_stop_leaves_no_process(federation: Federation) -> None:
    federation.daemons.stop_all()
    wait_for(lambda: not marked(), 30, "every started process ended")

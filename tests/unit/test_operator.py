"""The operator's pure pieces: the SuperLink command line and the federation folder."""

from __future__ import annotations

import socket
import threading
from pathlib import Path

import pytest

from server.operator.commands import node_table, superlink_argv
from server.operator.federation_dir import FederationDir, init_federation
from server.operator.remote_run import toml_pairs


def test_superlink_runs_with_tls_node_auth_and_no_runtime_installs(tmp_path: Path) -> None:
    config = init_federation(tmp_path / "fed", ["fed.example.org"])
    fed = FederationDir(tmp_path / "fed")
    argv = superlink_argv(fed, config, "0.0.0.0")
    flags = " ".join(argv)
    assert "--enable-supernode-auth" in argv and "--insecure" not in argv
    assert f"--ssl-certfile {fed.pki.server_cert}" in flags
    assert "--disable-runtime-dependency-installation" in argv
    assert "--host 127.0.0.1" in flags  # the Control API stays on loopback by default
    assert f"--database {fed.flower_home / 'state.db'}" in flags
    insecure = fed.with_ports(fleet=1, control=2, enroll=3, control_host="127.0.0.1",
                              insecure=True)  # fmt: skip
    plain = superlink_argv(fed, insecure, "127.0.0.1")
    assert "--insecure" in plain and "--enable-supernode-auth" not in plain
    assert "--fleet-api-address 127.0.0.1:1" in " ".join(plain)


def test_federation_folder_is_created_once(tmp_path: Path) -> None:
    config = init_federation(tmp_path / "fed", ["10.0.0.5", "fed.example.org"])
    assert config.address(config.enroll_port) == "10.0.0.5:9094"
    assert FederationDir(tmp_path / "fed").load() == config
    with pytest.raises(FileExistsError, match="already holds a federation"):
        init_federation(tmp_path / "fed", ["other"])
    with pytest.raises(FileNotFoundError, match="is not a federation directory"):
        FederationDir(tmp_path / "nothing").load()
    with pytest.raises(ValueError, match="`--host`"):
        init_federation(tmp_path / "fed2", [])


def test_run_config_pairs_read_back_through_flowers_parser() -> None:
    from flwr.common.config import parse_config_args

    pairs = {"num-server-rounds": 2, "run-dir": "/tmp/a b/runs", "recompress-tol": 0.01,
             "strategy": "flora", "resume-from": "", "flag": True}  # fmt: skip
    assert parse_config_args([toml_pairs(pairs)]) == pairs


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _federation(tmp_path: Path, control_port: int) -> Path:
    init_federation(tmp_path / "fed", ["127.0.0.1"])
    FederationDir(tmp_path / "fed").with_ports(
        fleet=1, control=control_port, enroll=3, control_host="127.0.0.1", insecure=False
    )
    return tmp_path / "fed"


def test_server_nodes_says_the_server_is_not_running_when_nothing_listens(tmp_path: Path) -> None:
    lines = node_table(_federation(tmp_path, _free_port()))
    assert lines[-1] == "(the server is not running: online status unknown)"


def test_server_nodes_says_what_failed_when_the_control_api_is_there_but_fails(
    tmp_path: Path,
) -> None:
    """A listener that speaks plaintext where TLS is expected (a TLS failure) is a running
    server that could not be asked, not a server that is not running."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    stop = threading.Event()

    def serve() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            with conn:
                conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        lines = node_table(_federation(tmp_path, port))
    finally:
        stop.set()
        thread.join(timeout=5)
        listener.close()
    note = lines[-1]
    assert "not running" not in note
    assert f"127.0.0.1:{port}" in note and "TLS" in note
    assert "online status unknown" in note

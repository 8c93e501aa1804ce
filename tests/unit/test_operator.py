"""The operator's pure pieces: the SuperLink command line and the federation folder."""

from __future__ import annotations

from pathlib import Path

import pytest

from server.operator.commands import superlink_argv
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

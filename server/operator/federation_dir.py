"""The operator's federation directory ``FED``: what lives where, read and written in one place.

```
FED/                 0700: only the operator (the folder's owner) reads or enters it
  federation.json    hosts, ports, CA pin, --insecure (written by init, ports by start)
  ca.pem ca.key      the federation's CA (ca.key: 0600; keep it offline-backed-up)
  server.pem/.key    TLS for the SuperLink and the enrollment service (chain: leaf + CA)
  operator.token     0600: the bearer token every Control API request needs
  superexec.secret   0600: Flower's SuperExec HMAC secret (Runtime API task routes)
  server.lock        held (fcntl) by the running `fedlora server start`
  enrollment.db      0600: invitations (hashed), enrolled nodes, enrollment events
  flower/            Flower's home: SuperLink state (state.db), installed apps, CLI config
                     and credentials.yaml (the operator token for the `flwr` CLI)
  logs/              superlink.log, superexec.log, enrollment.log
  runs/              run folders of `fedlora run` (metrics.jsonl, adapter/)
```
Operator commands run with umask 077, and `server start` tightens what an older fedlora left
readable: folders 0700, files 0600.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from common.files import write_json_atomic
from server.operator.control_guard import OPERATOR_TOKEN, SUPEREXEC_SECRET, ensure_secret
from server.operator.enrollment.registry import Registry
from server.operator.flower_control import ControlAddress
from server.operator.pki import ServerPki, ca_pin, create_pki

FLEET_PORT = 9092
CONTROL_PORT = 9093
ENROLL_PORT = 9094
CONFIG = "federation.json"
LOCK = "server.lock"


class AlreadyRunning(RuntimeError):
    """Another `fedlora server start` holds this federation folder."""


@dataclass(frozen=True)
class FederationConfig:
    hosts: list[str]
    ca_pin: str
    fleet_port: int = FLEET_PORT
    control_port: int = CONTROL_PORT
    enroll_port: int = ENROLL_PORT
    control_host: str = "127.0.0.1"
    insecure: bool = False

    @property
    def advertised_host(self) -> str:
        """The host nodes dial: the first ``--host`` of ``server init``."""
        return self.hosts[0]

    def address(self, port: int) -> str:
        host = self.advertised_host
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@dataclass(frozen=True)
class FederationDir:
    root: Path

    @property
    def pki(self) -> ServerPki:
        return ServerPki(self.root)

    @property
    def config_path(self) -> Path:
        return self.root / CONFIG

    @property
    def flower_home(self) -> Path:
        return self.root / "flower"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def runs(self) -> Path:
        return self.root / "runs"

    @property
    def operator_token(self) -> Path:
        return self.root / OPERATOR_TOKEN

    @property
    def superexec_secret(self) -> Path:
        return self.root / SUPEREXEC_SECRET

    def registry(self) -> Registry:
        return Registry(self.root / "enrollment.db")

    def exists(self) -> bool:
        return self.config_path.is_file()

    def load(self) -> FederationConfig:
        """Read ``federation.json``; a folder that is not a federation gets a clear error."""
        if not self.exists():
            raise FileNotFoundError(
                f"`--dir` {str(self.root)!r} is not a federation directory (no {CONFIG}): "
                f"create one with `fedlora server init --dir {self.root} --host NAME_OR_IP`"
            )
        data = json.loads(self.config_path.read_text())
        return FederationConfig(**data)

    def save(self, config: FederationConfig) -> None:
        write_json_atomic(self.config_path, asdict(config))

    def with_ports(
        self, *, fleet: int, control: int, enroll: int, control_host: str, insecure: bool
    ) -> FederationConfig:
        config = replace(
            self.load(),
            fleet_port=fleet,
            control_port=control,
            enroll_port=enroll,
            control_host=control_host,
            insecure=insecure,
        )
        self.save(config)
        return config

    def control(self, config: FederationConfig) -> ControlAddress:
        """The Control API as the operator reaches it (with the operator token)."""
        host = "127.0.0.1" if config.control_host in ("0.0.0.0", "::") else config.control_host
        host = f"[{host}]" if ":" in host else host
        return ControlAddress(
            f"{host}:{config.control_port}",
            None if config.insecure else self.pki.ca_cert,
            ensure_secret(self.operator_token),
        )

    def restrict(self) -> None:
        """Folders 0700 and files 0600 under FED: nothing in it is for other local users."""
        self.root.chmod(0o700)
        for folder, dirs, files in os.walk(self.root):
            for name in dirs:
                (Path(folder) / name).chmod(0o700)
            for name in files:
                path = Path(folder) / name
                if not path.is_symlink():
                    path.chmod(0o600)

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold ``FED/server.lock`` (fcntl) for a running server; refuse a second one."""
        fd = os.open(self.root / LOCK, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
                raise AlreadyRunning(
                    f"`--dir` {str(self.root)!r} is already served by `fedlora server start` "
                    f"(pid {holder}): stop that one first (Ctrl-C), or use another folder"
                ) from None
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            yield
        finally:
            os.close(fd)  # releases the lock


def init_federation(root: Path, hosts: list[str]) -> FederationConfig:
    """Create ``root`` with a CA, a server certificate for ``hosts`` and ``federation.json``."""
    if not hosts:
        raise ValueError("`--host` is missing: give the name or IP address nodes will dial")
    fed = FederationDir(root)
    if fed.exists():
        raise FileExistsError(
            f"{fed.config_path} exists: {str(root)!r} already holds a federation; use another "
            "`--dir`, or remove the folder to start over (enrolled nodes must then rejoin)"
        )
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    root.chmod(0o700)
    pki = create_pki(root, hosts)
    config = FederationConfig(hosts=list(hosts), ca_pin=ca_pin(pki.ca_cert.read_bytes()))
    fed.save(config)
    for folder in (fed.flower_home, fed.logs, fed.runs):
        folder.mkdir(mode=0o700, exist_ok=True)
    fed.registry()  # creates enrollment.db
    ensure_secret(fed.operator_token)
    ensure_secret(fed.superexec_secret)
    fed.restrict()
    return config

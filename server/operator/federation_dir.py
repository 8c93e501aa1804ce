"""The operator's federation directory ``FED``: what lives where, read and written in one place.

```
FED/
  federation.json    hosts, ports, CA pin, --insecure (written by init, ports by start)
  ca.pem ca.key      the federation's CA (ca.key: 0600; keep it offline-backed-up)
  server.pem/.key    TLS for the SuperLink and the enrollment service (chain: leaf + CA)
  enrollment.db      invitations (hashed), enrolled nodes, enrollment events
  flower/            Flower's home: SuperLink state (state.db), installed apps, CLI config
  logs/              superlink.log, enrollment.log
  runs/              run folders of `fedlora run` (metrics.jsonl, adapter/)
```
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from common.files import write_json_atomic
from server.operator.enrollment.registry import Registry
from server.operator.flower_control import ControlAddress
from server.operator.pki import ServerPki, ca_pin, create_pki

FLEET_PORT = 9092
CONTROL_PORT = 9093
ENROLL_PORT = 9094
CONFIG = "federation.json"


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
        host = "127.0.0.1" if config.control_host in ("0.0.0.0", "::") else config.control_host
        return ControlAddress(
            f"{host}:{config.control_port}", None if config.insecure else self.pki.ca_cert
        )


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
    pki = create_pki(root, hosts)
    config = FederationConfig(hosts=list(hosts), ca_pin=ca_pin(pki.ca_cert.read_bytes()))
    fed.save(config)
    for folder in (fed.flower_home, fed.logs, fed.runs):
        folder.mkdir(exist_ok=True)
    fed.registry()  # creates enrollment.db
    return config

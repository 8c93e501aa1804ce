"""The operator's commands: start the aggregation server, invite, list and revoke nodes.

``server start`` runs Flower 1.39's SuperLink (TLS, node authentication, persistent state in
FED) as a child in its own process group, Flower's SuperExec beside it (started again whenever
it exits: ``server.operator.restarts``), and the enrollment service in this process, until
SIGINT/SIGTERM or the SuperLink's exit; on the way out every child is ended.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import ssl
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from common.daemon import StopRequested, bin_dir, daemon_env, raise_on_signals, spawn, stop
from protos.tokens import check_node_name, new_token, parse_ttl
from server.operator.control_guard import ensure_secret
from server.operator.enrollment.service import EnrollmentServicer, serve
from server.operator.federation_dir import FederationConfig, FederationDir
from server.operator.flower_control import (
    ControlAddress,
    FlowerNode,
    list_nodes,
    register_node,
    unregister_node,
)
from server.operator.restarts import Restarting
from server.operator.roster import invitation_lines, node_lines, reconcile

Echo = Callable[[str], None]
READY_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class ServerOptions:
    fleet_port: int
    control_port: int
    enroll_port: int
    bind: str = "0.0.0.0"  # Fleet API and enrollment: what nodes reach
    control_host: str = "127.0.0.1"  # Control API: the operator's machine only, by default
    insecure: bool = False


def superlink_argv(fed: FederationDir, config: FederationConfig, bind: str) -> list[str]:
    """Flower's SuperLink behind fedlora's operator-only guard (``superlink_main``), with
    ``--isolation process``: the SuperExec is ours (:func:`superexec_argv`) and signs its
    Runtime API calls with ``FED/superexec.secret``."""
    argv = [
        sys.executable,
        "-m",
        "server.operator.superlink_main",
        "--token-file",
        str(fed.operator_token),
        "--",
        "--database",
        str(fed.flower_home / "state.db"),
        "--disable-runtime-dependency-installation",
        "--fleet-api-address",
        f"{bind}:{config.fleet_port}",
        "--host",
        config.control_host,
        "--port",
        str(config.control_port),
        "--isolation",
        "process",
        "--superexec-auth-secret-file",
        str(fed.superexec_secret),
    ]
    if config.insecure:
        return [*argv, "--insecure"]
    pki = fed.pki
    return [
        *argv,
        "--ssl-ca-certfile",
        str(pki.ca_cert),
        "--ssl-certfile",
        str(pki.server_cert),
        "--ssl-keyfile",
        str(pki.server_key),
        "--enable-supernode-auth",
    ]


def superexec_argv(fed: FederationDir, config: FederationConfig, parent_pid: int) -> list[str]:
    """Flower's SuperExec (launches the ServerApp of each run), authenticated to the Runtime
    API with the HMAC secret only the operator can read."""
    tls = ["--insecure"] if config.insecure else ["--root-certificates", str(fed.pki.ca_cert)]
    return [
        str(bin_dir() / "flower-superexec"),
        "--runtime-api-address",
        fed.control(config).address,
        *tls,
        "--superexec-auth-secret-file",
        str(fed.superexec_secret),
        "--parent-pid",
        str(parent_pid),
    ]


def check_control_host(host: str, *, insecure: bool) -> None:
    """Refuse a Control API on the network without TLS: the operator token would travel in
    the clear."""
    if insecure and not is_loopback(host):
        raise ValueError(
            f"`--control-host` is {host!r} with `--insecure`: the Control API would take the "
            "operator token in plaintext from the network; use the default 127.0.0.1 (reach "
            "it over SSH), or drop `--insecure` so it is served over TLS"
        )


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _wait_ready(
    fed: FederationDir, config: FederationConfig, superlink_alive: Callable[[], bool]
) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while True:
        try:
            list_nodes(fed.control(config))
            return
        except Exception as err:  # not listening yet
            if not superlink_alive():
                raise RuntimeError(_died(fed)) from err
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"the SuperLink did not answer in {READY_TIMEOUT_S:.0f} s: "
                    f"see {fed.logs / 'superlink.log'}"
                ) from err
            time.sleep(0.3)


def _died(fed: FederationDir) -> str:
    log = fed.logs / "superlink.log"
    tail = log.read_text(errors="replace").strip().splitlines()[-5:] if log.is_file() else []
    return "the SuperLink exited:\n  " + "\n  ".join(tail) + f"\n(full log: {log})"


def _enrollment_logging(fed: FederationDir) -> None:
    logger = logging.getLogger("fedlora.enrollment")
    logger.setLevel(logging.INFO)
    handler = logging.FileHandler(fed.logs / "enrollment.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    logger.addHandler(handler)
    logger.addHandler(logging.StreamHandler())


# A service started beside the SuperLink once it is ready (the dashboard); returns its stop.
Service = Callable[[], Callable[[], None]]


def start_server(
    root: Path, options: ServerOptions, *, echo: Echo = print, services: Sequence[Service] = ()
) -> int:
    """Run the SuperLink, the enrollment service and ``services`` until SIGINT/SIGTERM."""
    fed = FederationDir(root)
    fed.load()
    check_control_host(options.control_host, insecure=options.insecure)
    with fed.lock():  # a second `server start` stops here, before it changes anything
        os.umask(0o077)
        ensure_secret(fed.operator_token)
        ensure_secret(fed.superexec_secret)
        fed.logs.mkdir(exist_ok=True)
        fed.restrict()
        config = fed.with_ports(
            fleet=options.fleet_port,
            control=options.control_port,
            enroll=options.enroll_port,
            control_host=options.control_host,
            insecure=options.insecure,
        )
        return _serve(fed, config, options, echo, services)


def _serve(
    fed: FederationDir,
    config: FederationConfig,
    options: ServerOptions,
    echo: Echo,
    services: Sequence[Service],
) -> int:
    if config.insecure:
        echo(
            "[fedlora] WARNING: --insecure: node traffic and enrollment are PLAINTEXT and nodes "
            "are not authenticated; never use this outside a test bench"
        )
    _enrollment_logging(fed)
    raise_on_signals()
    env = daemon_env({"FLWR_HOME": str(fed.flower_home)})
    superlink = spawn(
        superlink_argv(fed, config, options.bind), env=env, log_path=fed.logs / "superlink.log"
    )
    superexec = Restarting(
        "Flower's SuperExec (runs' launcher)",
        superexec_argv(fed, config, superlink.pid),
        env,
        fed.logs / "superexec.log",
        echo,
    )
    enrollment = None
    stops: list[Callable[[], None]] = []
    try:
        _wait_ready(fed, config, lambda: superlink.poll() is None)
        superexec.check()
        pki = fed.pki
        tls = (
            None if config.insecure else (pki.server_cert.read_bytes(), pki.server_key.read_bytes())
        )
        servicer = EnrollmentServicer(
            registry=fed.registry(),
            register=partial(_register, fed.control(config)),
            unregister=partial(unregister_node, fed.control(config)),
            ca_pem=pki.ca_cert.read_bytes(),
            superlink_address=config.address(config.fleet_port),
        )
        enrollment = serve(servicer, address=f"{options.bind}:{config.enroll_port}", tls=tls)
        stops.extend(start() for start in services)
        _announce(fed.root, config, echo)
        while superlink.poll() is None:
            superexec.check()
            time.sleep(0.5)
        echo(f"[fedlora] error: {_died(fed)}")
        return 1
    except StopRequested as sig:
        echo(f"[fedlora] {sig}: stopping the server")
        return 0
    finally:
        for stop_service in stops:
            stop_service()
        if enrollment is not None:
            enrollment.stop(grace=2.0)
            servicer.report(servicer.limiter.flush(every=True))
        superexec.stop()
        stop(superlink)


def _register(control: ControlAddress, name: str, public_key: str) -> int:
    return register_node(control, name=name, public_key=public_key)


def _announce(root: Path, config: FederationConfig, echo: Echo) -> None:
    echo(f"[fedlora] SuperLink Fleet API (nodes, gRPC):  {config.address(config.fleet_port)}")
    echo(f"[fedlora] enrollment service (nodes, gRPC):    {config.address(config.enroll_port)}")
    echo(
        f"[fedlora] Control API (operator token only):   "
        f"{config.control_host}:{config.control_port} (token: {root / 'operator.token'})"
    )
    echo(f"[fedlora] logs: {root / 'logs'}; stop with Ctrl-C")
    echo(f"[fedlora] next: fedlora server invite --dir {root} --name hospital-a")


def invite(root: Path, *, name: str, ttl: str) -> str:
    """Store a hashed invitation for ``name`` and return the token to hand over."""
    fed = FederationDir(root)
    config = fed.load()
    check_node_name(name)
    token = new_token(address=config.address(config.enroll_port), ca_pin=config.ca_pin)
    fed.registry().add_invitation(
        token_id=token.token_id, name=name, secret=token.secret, ttl_s=parse_ttl(ttl)
    )
    return token.encode()


def node_table(root: Path) -> list[str]:
    """``server nodes``: our enrollment records joined with Flower's view of each node."""
    fed = FederationDir(root)
    config = fed.load()
    records = fed.registry().nodes()
    control = fed.control(config)
    flower: list[FlowerNode] | None
    try:
        flower = list_nodes(control)
        note = ""
    except Exception as err:
        flower, note = None, _control_failure(err, control)
    lines = node_lines(reconcile(records, flower), str(root))
    return [*lines, note] if note else lines


def _control_failure(err: Exception, control: ControlAddress) -> str:
    """``server nodes``' note when Flower's Control API could not be asked for node status:
    nothing listening means the server is not running; anything else says what failed."""
    causes: list[BaseException] = []
    cause: BaseException | None = err
    while cause is not None and cause not in causes:
        causes.append(cause)
        cause = cause.__cause__ or cause.__context__
    if any(isinstance(c, ConnectionRefusedError) for c in causes):
        return "(the server is not running: online status unknown)"
    root = causes[-1]
    what = f"{type(root).__name__}: {root}"
    if any(isinstance(c, ssl.SSLError) for c in causes):
        fix = (
            f"TLS with the Control API failed; check that {control.ca_cert} is the CA of the "
            "SuperLink's certificate and that `--insecure` matches how the server was started"
        )
    else:
        fix = "see the SuperLink's log in the federation's logs/ folder"
    return (
        f"(could not ask the Control API at {control.address} ({what}): {fix}; "
        "online status unknown)"
    )


def revoke(root: Path, name: str) -> str:
    """Unregister ``name``'s key from Flower's node authentication; it can no longer connect."""
    fed = FederationDir(root)
    config = fed.load()
    registry = fed.registry()
    record = registry.node(name)
    if record is None:
        cancelled = registry.cancel_invitations(name)
        if cancelled:
            return f"{name} had not joined yet: cancelled its pending invitation"
        known = ", ".join(r.name for r in registry.nodes()) or "none"
        raise ValueError(f"`NAME` {name!r} is not an enrolled node (enrolled: {known})")
    if record.status == "revoked":
        cancelled = registry.mark_revoked(name)
        return f"{name} was already revoked" + (
            f"; cancelled {cancelled} pending invitation(s)" if cancelled else ""
        )
    try:
        unregister_node(fed.control(config), record.node_id)
    except Exception as err:
        raise RuntimeError(
            f"could not reach the SuperLink to revoke {name!r} ({err}): run this while "
            f"`fedlora server start --dir {root}` is running"
        ) from None
    cancelled = registry.mark_revoked(name)
    also = f"; cancelled {cancelled} pending invitation(s)" if cancelled else ""
    return f"revoked {name} (key {record.fingerprint}): it can no longer connect{also}"


def invitations(root: Path, *, cancel: str | None = None) -> list[str]:
    """``server invitations``: the pending invitations, or cancel those of one name."""
    fed = FederationDir(root)
    fed.load()
    registry = fed.registry()
    if cancel is None:
        return invitation_lines(registry.pending())
    count = registry.cancel_invitations(cancel)
    if not count:
        pending = ", ".join(sorted({i.name for i in registry.pending()})) or "none"
        raise ValueError(f"`--cancel` {cancel!r} has no pending invitation (pending: {pending})")
    return [f"cancelled {count} invitation(s) for {cancel}: its token no longer enrolls"]

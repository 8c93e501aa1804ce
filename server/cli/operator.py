"""The operator's commands of ``fedlora``: ``server …`` and ``run``.

Thin: parsing here, the work in ``server/operator/commands.py`` and
``server/operator/remote_run.py``.
"""

from __future__ import annotations

import argparse
import functools
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from server.dashboard.access import DASHBOARD_PORT
from server.operator.federation_dir import CONTROL_PORT, ENROLL_PORT, FLEET_PORT

Parse = Callable[[str], Any]
Command = Callable[[argparse.Namespace], int]


def _private(command: Command) -> Command:
    """Operator commands create files for the operator alone (umask 077)."""

    @functools.wraps(command)
    def run(args: argparse.Namespace) -> int:
        os.umask(0o077)
        return command(args)

    return run


def _cmd_server_init(args: argparse.Namespace) -> int:
    from server.operator.federation_dir import init_federation

    config = init_federation(args.dir, args.host)
    print(f"[fedlora] federation created in {args.dir} (CA pin {config.ca_pin})")
    print(f"[fedlora] certificate names: {', '.join(config.hosts)} (+ localhost, 127.0.0.1)")
    print(f"[fedlora] next: fedlora server start --dir {args.dir}")
    return 0


def _cmd_server_start(args: argparse.Namespace) -> int:
    from server.dashboard.access import new_access
    from server.dashboard.app import Dashboard
    from server.operator.commands import ServerOptions, start_server

    options = ServerOptions(
        fleet_port=args.fleet_port,
        control_port=args.control_port,
        enroll_port=args.enroll_port,
        bind=args.bind,
        control_host=args.control_host,
        insecure=args.insecure,
    )

    def dashboard() -> Callable[[], None]:
        started = Dashboard(args.dir, new_access(args.dir, port=args.dashboard_port)).start()
        print(
            f"[fedlora] dashboard (loopback, needs its token): http://127.0.0.1:{args.dashboard_port}/"
            f" — `fedlora server dashboard --dir {args.dir}` prints the URL"
        )
        return started.stop

    return start_server(args.dir, options, services=[dashboard] if args.dashboard_port else [])


def _cmd_server_dashboard(args: argparse.Namespace) -> int:
    from server.dashboard.access import load_access

    print(load_access(args.dir).url)
    return 0


def _cmd_server_invite(args: argparse.Namespace) -> int:
    from server.operator.commands import invite

    token = invite(args.dir, name=args.name, ttl=args.ttl)
    print(f"[fedlora] invitation for {args.name!r}, valid {args.ttl}, single use. On the node:")
    print("  fedlora node join TOKEN --dir NODE_DIR")
    print(token)
    return 0


def _cmd_server_nodes(args: argparse.Namespace) -> int:
    from server.operator.commands import node_table

    print("\n".join(node_table(args.dir)))
    return 0


def _cmd_server_revoke(args: argparse.Namespace) -> int:
    from server.operator.commands import revoke

    print(f"[fedlora] {revoke(args.dir, args.name)}")
    return 0


def _cmd_server_invitations(args: argparse.Namespace) -> int:
    from server.operator.commands import invitations

    print("\n".join(invitations(args.dir, cancel=args.cancel)))
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from server.operator.remote_run import submit

    overrides = dict(args.config or [])
    if args.rounds is not None:
        overrides["num-server-rounds"] = args.rounds
    if args.resume is not None:
        from server.run.checkpoint import saved_run_config

        resume = str(args.resume.resolve())
        overrides = {**saved_run_config({"resume-from": resume}), **overrides}
        overrides["resume-from"] = resume
    return submit(args.dir, overrides, verbose=args.verbose)


def add_server_commands(sub: Any, parse_override: Parse) -> None:
    server = sub.add_parser("server", help="operator: the aggregation server").add_subparsers(
        dest="server_command", required=True
    )
    init = server.add_parser("init", help="create a federation directory: CA and certificates")
    init.add_argument("--dir", type=Path, required=True, help="the federation directory FED")
    init.add_argument(
        "--host",
        action="append",
        required=True,
        help="name or IP nodes dial (repeatable; the first is advertised)",
    )
    init.set_defaults(func=_private(_cmd_server_init))

    start = server.add_parser("start", help="run the SuperLink and enrollment (foreground)")
    start.add_argument("--dir", type=Path, required=True)
    start.add_argument("--fleet-port", type=int, default=FLEET_PORT, help="nodes' gRPC traffic")
    start.add_argument("--enroll-port", type=int, default=ENROLL_PORT, help="node enrollment")
    start.add_argument(
        "--control-port",
        type=int,
        default=CONTROL_PORT,
        help="Control API for `fedlora run` (loopback)",
    )
    start.add_argument("--bind", default="0.0.0.0", help="address the node ports listen on")
    start.add_argument(
        "--control-host",
        default="127.0.0.1",
        help="address the Control API listens on (default loopback only; every request needs "
        "FED/operator.token; a non-loopback address needs TLS, i.e. no --insecure)",
    )
    start.add_argument("--insecure", action="store_true", help="plaintext, no node auth (tests)")
    start.add_argument(
        "--dashboard-port",
        type=int,
        default=DASHBOARD_PORT,
        help=f"the operator's dashboard on loopback (default {DASHBOARD_PORT}; 0: off)",
    )
    start.set_defaults(func=_private(_cmd_server_start))

    dash = server.add_parser("dashboard", help="print the dashboard's URL with its access token")
    dash.add_argument("--dir", type=Path, required=True)
    dash.set_defaults(func=_cmd_server_dashboard)

    inv = server.add_parser("invite", help="print a single-use, expiring token for one node")
    inv.add_argument("--dir", type=Path, required=True)
    inv.add_argument(
        "--name",
        required=True,
        help="the node's name, e.g. hospital-a: up to 64 ASCII letters, digits, '-', '_', '.'",
    )
    inv.add_argument("--ttl", default="1h", help="lifetime: 90s, 30m, 1h, 2d (default 1h)")
    inv.set_defaults(func=_private(_cmd_server_invite))

    invs = server.add_parser("invitations", help="pending invitations; --cancel NAME cancels")
    invs.add_argument("--dir", type=Path, required=True)
    invs.add_argument("--cancel", metavar="NAME", help="cancel NAME's pending invitations")
    invs.set_defaults(func=_private(_cmd_server_invitations))

    nodes = server.add_parser("nodes", help="enrolled nodes and their status")
    nodes.add_argument("--dir", type=Path, required=True)
    nodes.set_defaults(func=_private(_cmd_server_nodes))

    rev = server.add_parser(
        "revoke", help="unregister a node's key and cancel its invitations: it can no longer join"
    )
    rev.add_argument("--dir", type=Path, required=True)
    rev.add_argument("name", help="the node's name")
    rev.set_defaults(func=_private(_cmd_server_revoke))

    run = sub.add_parser("run", help="operator: run a federation on the running server")
    run.add_argument("--dir", type=Path, required=True)
    run.add_argument("--rounds", type=int, help="federated rounds (default 3)")
    run.add_argument(
        "--config",
        type=parse_override,
        action="append",
        metavar="KEY=VALUE",
        help="any run-config key, e.g. --config local-steps=10 (repeatable)",
    )
    run.add_argument(
        "--resume",
        type=Path,
        metavar="RUN_DIR",
        help="continue this run folder from its last completed round",
    )
    run.add_argument("-v", "--verbose", action="store_true", help="show Flower's own log")
    run.set_defaults(func=_private(_cmd_run))

"""The deployment commands of ``fedlora``: ``server …`` and ``run`` for the operator, ``node …``
for each institution's admin. Thin: parsing here, the work in ``server/operator.py``,
``server/remote_run.py`` and ``client/node.py``."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from server.federation_dir import CONTROL_PORT, ENROLL_PORT, FLEET_PORT

Parse = Callable[[str], Any]


def _cmd_server_init(args: argparse.Namespace) -> int:
    from server.federation_dir import init_federation

    config = init_federation(args.dir, args.host)
    print(f"[fedlora] federation created in {args.dir} (CA pin {config.ca_pin})")
    print(f"[fedlora] certificate names: {', '.join(config.hosts)} (+ localhost, 127.0.0.1)")
    print(f"[fedlora] next: fedlora server start --dir {args.dir}")
    return 0


def _cmd_server_start(args: argparse.Namespace) -> int:
    from server.operator import ServerOptions, start_server

    options = ServerOptions(
        fleet_port=args.fleet_port,
        control_port=args.control_port,
        enroll_port=args.enroll_port,
        bind=args.bind,
        control_host=args.control_host,
        insecure=args.insecure,
    )
    return start_server(args.dir, options)


def _cmd_server_invite(args: argparse.Namespace) -> int:
    from server.operator import invite

    token = invite(args.dir, name=args.name, ttl=args.ttl)
    print(f"[fedlora] invitation for {args.name!r}, valid {args.ttl}, single use. On the node:")
    print("  fedlora node join TOKEN --dir NODE_DIR")
    print(token)
    return 0


def _cmd_server_nodes(args: argparse.Namespace) -> int:
    from server.operator import node_table

    print("\n".join(node_table(args.dir)))
    return 0


def _cmd_server_revoke(args: argparse.Namespace) -> int:
    from server.operator import revoke

    print(f"[fedlora] {revoke(args.dir, args.name)}")
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from server.remote_run import submit

    overrides = dict(args.config or [])
    if args.rounds is not None:
        overrides["num-server-rounds"] = args.rounds
    if args.resume is not None:
        from server.checkpoint import saved_run_config

        resume = str(args.resume.resolve())
        overrides = {**saved_run_config({"resume-from": resume}), **overrides}
        overrides["resume-from"] = resume
    return submit(args.dir, overrides, verbose=args.verbose)


def _cmd_node_join(args: argparse.Namespace) -> int:
    from client.node import join

    if args.insecure:
        print("[fedlora] WARNING: --insecure: enrollment is PLAINTEXT and the CA is not checked")
    info = join(args.token, args.dir, insecure=args.insecure)
    print(
        f"[fedlora] joined as {info.name!r} (node id {info.node_id}); SuperLink "
        f"{info.superlink}; key and CA in {args.dir}"
    )
    print(f"[fedlora] next: fedlora node start --dir {args.dir} --data PATH")
    return 0


def _cmd_node_start(args: argparse.Namespace) -> int:
    from client.node import start

    return start(
        args.dir,
        data=args.data,
        rank=args.rank,
        device=args.device,
        port=args.local_port,
        overrides=dict(args.config or []),
    )


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
    init.set_defaults(func=_cmd_server_init)

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
        help="address the Control API listens on (default loopback only)",
    )
    start.add_argument("--insecure", action="store_true", help="plaintext, no node auth (tests)")
    start.set_defaults(func=_cmd_server_start)

    inv = server.add_parser("invite", help="print a single-use, expiring token for one node")
    inv.add_argument("--dir", type=Path, required=True)
    inv.add_argument("--name", required=True, help="the node's name, e.g. hospital-a")
    inv.add_argument("--ttl", default="1h", help="lifetime: 90s, 30m, 1h, 2d (default 1h)")
    inv.set_defaults(func=_cmd_server_invite)

    nodes = server.add_parser("nodes", help="enrolled nodes and their status")
    nodes.add_argument("--dir", type=Path, required=True)
    nodes.set_defaults(func=_cmd_server_nodes)

    rev = server.add_parser("revoke", help="unregister a node's key: it can no longer connect")
    rev.add_argument("--dir", type=Path, required=True)
    rev.add_argument("name", help="the node's name")
    rev.set_defaults(func=_cmd_server_revoke)

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
    run.set_defaults(func=_cmd_run)


def add_node_commands(sub: Any, parse_value: Parse) -> None:
    node = sub.add_parser("node", help="node admin: join a federation, run the node")
    cmds = node.add_subparsers(dest="node_command", required=True)
    join = cmds.add_parser("join", help="enroll this node with an invitation token")
    join.add_argument("token", help="the token `fedlora server invite` printed")
    join.add_argument("--dir", type=Path, required=True, help="the node directory NODE")
    join.add_argument("--insecure", action="store_true", help="plaintext enrollment (tests)")
    join.set_defaults(func=_cmd_node_join)

    start = cmds.add_parser("start", help="run the node (Flower SuperNode) in the foreground")
    start.add_argument("--dir", type=Path, required=True)
    start.add_argument("--data", type=Path, required=True, help="folder: train.jsonl, eval.jsonl")
    start.add_argument("--rank", type=int, help="this node's LoRA rank (default: run config)")
    start.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    start.add_argument(
        "--local-port", type=int, help="local port for Flower's ClientApp API (default: a free one)"
    )
    start.add_argument(
        "--config",
        type=parse_value,
        action="append",
        metavar="KEY=VALUE",
        help="this node's own policy, e.g. --config privacy=dp-sgd --config dp-max-epsilon=8 "
        "(may only tighten the run's privacy; repeatable)",
    )
    start.set_defaults(func=_cmd_node_start)

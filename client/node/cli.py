"""The node admin's commands of ``fedlora``: ``node join`` and ``node start``.

Thin: parsing here, the work in ``client/node/join.py`` and ``client/node/start.py``.
Torch-free.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

Parse = Callable[[str], Any]


def _cmd_node_join(args: argparse.Namespace) -> int:
    from client.node.join import join

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
    from client.node.start import start

    return start(
        args.dir,
        data=args.data,
        rank=args.rank,
        device=args.device,
        port=args.local_port,
        overrides=dict(args.config or []),
    )


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
        help="this node's own policy, e.g. --config privacy=dp-sgd --config dp-noise-multiplier=1 "
        "--config dp-max-epsilon=8 "
        "(may only tighten the run's privacy; repeatable)",
    )
    start.set_defaults(func=_cmd_node_start)

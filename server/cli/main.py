"""The ``fedlora`` command: one entry point whose sub-commands follow the user's journeys.

Heavy imports (torch, transformers, peft) happen inside the commands that need them.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tomllib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from client.node.cli import add_node_commands
from common.config import DEFAULT_RUN_CONFIG, ConfigValue, SettingsError
from server.cli.operator import add_server_commands
from server.compare.arms import DEFAULT_ROUNDS
from server.operator.enrollment.registry import Refused


def parse_key_value(text: str) -> tuple[str, ConfigValue]:
    """Parse ``key=value``; the value is TOML (``3``, ``0.5``, ``true``), else a bare string."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise argparse.ArgumentTypeError(
            f"`--config` got {text!r}: write key=value, e.g. local-steps=10"
        )
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()
    if not isinstance(value, bool | int | float | str):
        raise argparse.ArgumentTypeError(f"`--config {key}` must be a number, boolean or string")
    return key, value


def parse_override(text: str) -> tuple[str, ConfigValue]:
    """A run-config ``key=value``: the key must be a run-config key."""
    key, value = parse_key_value(text)
    if key not in DEFAULT_RUN_CONFIG:
        known = ", ".join(sorted(DEFAULT_RUN_CONFIG))
        raise argparse.ArgumentTypeError(f"`--config` key {key!r} is unknown: use one of {known}")
    return key, value


def _cmd_simulate(args: argparse.Namespace) -> int:
    from server.simulation.simulate import simulate

    overrides: dict[str, ConfigValue] = dict(args.config or [])
    for key, value in (("num-server-rounds", args.rounds), ("lora-ranks", args.ranks),
                       ("run-dir", args.run_dir), ("base-model", args.base_model),
                       ("resume-from", args.resume)):  # fmt: skip
        if value is not None:
            overrides[key] = value
    nodes, node_configs = args.nodes, None
    if args.data is not None:
        folders = sorted(d for d in args.data.iterdir() if (d / "train.jsonl").is_file())
        if not folders:
            raise ValueError(
                f"`--data` {str(args.data)!r} has no sub-folder holding train.jsonl: use one "
                "folder per node (see `fedlora data synth --out DIR`)"
            )
        nodes = len(folders)
        node_configs = [{"data-path": str(d), "node-name": d.name} for d in folders]
    outcome = simulate(
        num_nodes=nodes,
        run_config=overrides,
        node_configs=node_configs,
        num_threads=args.threads,
        verbose=args.verbose,
        state_dir=args.state_dir,
        live=sys.stdout.isatty(),  # a live bar on a terminal; plain lines in pipes and logs
    )
    print(f"[fedlora] metrics: {outcome.run_dir / 'metrics.jsonl'}")
    return 0 if outcome.stopped is None else 1


# `data synth` lists each folder up to this many institutions, then one summary line.
LISTED_FOLDERS = 12


def _cmd_data_synth(args: argparse.Namespace) -> int:
    from client.data.synth import write_setting
    from client.data.synth.many import roster_summary, write_institutions

    if args.nodes is not None:
        _check_nodes_option(args)
        folders = write_institutions(args.out, args.nodes, n_train=args.train, n_eval=args.eval,
                                     seed=args.seed)  # fmt: skip
    else:
        partitions = 3 if args.partitions is None else args.partitions
        folders = write_setting(args.out, args.setting, partitions=partitions,
                                n_train=args.train, n_eval=args.eval, seed=args.seed)  # fmt: skip
    if len(folders) > LISTED_FOLDERS:
        train = sum(1 for _ in (folders[0] / "train.jsonl").open(encoding="utf-8"))
        print(f"{args.out}: {len(folders)} institutions ({roster_summary(folders)}), "
              f"{train} training and {args.eval} eval records each")  # fmt: skip
        return 0
    for folder in folders:
        train = sum(1 for _ in (folder / "train.jsonl").open(encoding="utf-8"))
        print(f"{folder}/train.jsonl ({train} records), eval.jsonl ({args.eval})")
    return 0


def _check_nodes_option(args: argparse.Namespace) -> None:
    """`--nodes` goes with the domains setting alone; refuse the other combinations."""
    if args.setting == "scarce":
        raise ValueError(
            f"`--nodes` is {args.nodes} with `--setting scarce`, whose six institutions are "
            f"fixed: drop `--nodes`, or write {args.nodes} institutions with little data "
            f"with `--nodes {args.nodes} --train 48`"
        )
    if args.partitions is not None:
        raise ValueError(
            f"`--partitions` is {args.partitions} and `--nodes` is {args.nodes}: give one, "
            "`--nodes N` (institutions with their own case mix and style) or `--partitions N` "
            "(the three domains' plain profiles)"
        )


def _cmd_adapter_inspect(args: argparse.Namespace) -> int:
    from safetensors.numpy import load_file

    config = json.loads((args.adapter / "adapter_config.json").read_text())
    weights = load_file(str(args.adapter / "adapter_model.safetensors"))
    print(f"base model: {config.get('base_model_name_or_path')}")
    rank, alpha = config["r"], config["lora_alpha"]
    print(f"rank r={rank} lora_alpha={alpha} (scaling {alpha / rank:g})")
    print(f"{len(weights) // 2} modules, {sum(w.size for w in weights.values()):,} parameters")
    provenance = args.adapter / "fedlora.json"
    if provenance.is_file():
        print(f"fedlora: {provenance.read_text().strip()}")
    return 0


def _cmd_adapter_evaluate(args: argparse.Namespace) -> int:
    import torch
    from peft import PeftModel

    from client.data.records import read_jsonl
    from client.data.synth import EVAL_FILE
    from client.model.loading import load_base
    from client.training import encode, evaluate_loss

    data = args.data / EVAL_FILE if args.data.is_dir() else args.data
    base, tokenizer = load_base(args.base_model, device=torch.device("cpu"))
    rows = encode(read_jsonl(data), tokenizer, max_length=args.max_length)
    base_loss, _ = evaluate_loss(base, rows, pad_id=tokenizer.pad_token_id)
    model = PeftModel.from_pretrained(base, str(args.adapter))
    loss, tokens = evaluate_loss(model, rows, pad_id=tokenizer.pad_token_id)
    print(f"{data}: {len(rows)} records, {tokens} tokens")
    print(f"eval loss base {base_loss:.4f} -> with adapter {loss:.4f}")
    return 0


def add_compare_command(sub: Any) -> None:
    """``fedlora compare [--rounds N] [--out DIR] [--settings ...] [--quick] [--config K=V]``
    (argparse's sub-parsers)."""
    cmd = sub.add_parser(
        "compare", help="every strategy, personalized, centralized and local-only LoRA"
    )
    cmd.add_argument("--rounds", type=int, help=f"rounds per federation (default "
                     f"{DEFAULT_ROUNDS}; 2 with --quick)")  # fmt: skip
    cmd.add_argument("--out", type=Path, default=Path("runs") / "compare",
                     help="folder for comparison.md/.png/.json and the runs")  # fmt: skip
    cmd.add_argument(
        "--settings",
        default="het,r8,scarce,dp",
        help="comma-separated settings: het, r8, scarce, dp (default: all)",
    )
    cmd.add_argument(
        "--quick",
        action="store_true",
        help="a small version (2 local steps, 16 records, 2-3 arms per setting)",
    )
    cmd.add_argument("--base-model", help="model folder or hub id (default: the embedded model)")
    cmd.add_argument(
        "--config",
        type=parse_override,
        action="append",
        metavar="KEY=VALUE",
        help="a run-config key for every arm, e.g. --config max-norm-ratio=3 (repeatable)",
    )
    cmd.add_argument("--jobs", type=int, default=default_jobs(),
                     help="arms run at once, each in its own process with "
                     "cores/jobs torch threads (default: %(default)s, from the CPU count; "
                     "1: all in this process); the results do not change")  # fmt: skip
    cmd.set_defaults(func=_cmd_compare)


def default_jobs() -> int:
    """Worker processes for ``compare``: one per core, at most 4 (one thread each suits the
    embedded model; a larger model gets more threads per arm)."""
    return max(1, min(4, os.cpu_count() or 1))


def _cmd_compare(args: argparse.Namespace) -> int:
    from server.compare.arms import default_arms, quick_arms
    from server.compare.run import compare

    settings = [s.strip() for s in args.settings.split(",") if s.strip()]
    arms = quick_arms(settings) if args.quick else default_arms(settings)
    rounds = args.rounds or (2 if args.quick else DEFAULT_ROUNDS)
    extra: dict[str, ConfigValue] = dict(args.config or [])
    if args.base_model:
        extra["base-model"] = args.base_model
    if args.jobs < 1:
        raise ValueError(f"`--jobs` is {args.jobs}: use an integer >= 1 (1: one process)")
    compare(rounds=rounds, out=args.out, arms=arms, quick=args.quick, extra=extra, jobs=args.jobs)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fedlora", description=__doc__.splitlines()[0] if __doc__ else ""
    )
    sub = parser.add_subparsers(dest="command", required=True)

    sim = sub.add_parser("simulate", help="run a whole federation locally (in this process)")
    sim.add_argument("--nodes", type=int, default=3, help="number of institutions (default 3)")
    sim.add_argument("--data", type=Path, help="one sub-folder of JSONL per node (sets --nodes)")
    sim.add_argument("--rounds", type=int, help="federated rounds (default 3)")
    sim.add_argument("--ranks", help='LoRA rank per node, cycled (default "4,8,16")')
    sim.add_argument("--base-model", help="model folder or hub id (default: the embedded model)")
    sim.add_argument(
        "--threads",
        type=int,
        help="torch CPU threads (node setting `num-threads`; 0: torch's own choice, one per "
        "core; default: 1 with the embedded model, torch's choice with --base-model)",
    )
    sim.add_argument("--run-dir", help="where run folders go (default ./runs)")
    sim.add_argument(
        "--state-dir",
        type=Path,
        help="one folder per node under this one keeps its privacy ledger across runs "
        "(default: inside the run folder, so each run starts from ε = 0)",
    )
    sim.add_argument(
        "--resume",
        metavar="RUN_DIR",
        help="continue this run folder from its last completed round (its settings are reused; "
        "raise --rounds to run more)",
    )
    sim.add_argument(
        "--config",
        type=parse_override,
        action="append",
        metavar="KEY=VALUE",
        help="any run-config key, e.g. --config local-steps=10 (repeatable)",
    )
    sim.add_argument("-v", "--verbose", action="store_true", help="show Flower's own log")
    sim.set_defaults(func=_cmd_simulate)

    add_compare_command(sub)

    data = sub.add_parser("data", help="node data").add_subparsers(
        dest="data_command", required=True
    )
    synth = data.add_parser("synth", help="write the synthetic institutions' JSONL data")
    synth.add_argument("--out", type=Path, required=True, help="folder; one sub-folder per node")
    synth.add_argument(
        "--setting",
        choices=("domains", "scarce"),
        default="domains",
        help="domains: --partitions institutions over three domains, 256 training records "
        "each; scarce: six institutions, two per domain, 48 training records each",
    )
    synth.add_argument(
        "--partitions", type=int, help="institutions with the domains' plain profiles (default 3)"
    )
    synth.add_argument(
        "--nodes",
        type=int,
        help="N institutions cycling cardiology, pediatrics and banking, each with its own case "
        "mix, writing style and seed (domains setting)",
    )
    synth.add_argument("--train", type=int, help="training records per institution")
    synth.add_argument("--eval", type=int, default=64)
    synth.add_argument("--seed", type=int, default=0)
    synth.set_defaults(func=_cmd_data_synth)

    adapter = sub.add_parser("adapter", help="exported adapters").add_subparsers(
        dest="adapter_command", required=True
    )
    inspect = adapter.add_parser("inspect", help="rank, modules and provenance of an adapter")
    inspect.add_argument("adapter", type=Path)
    inspect.set_defaults(func=_cmd_adapter_inspect)
    evaluate = adapter.add_parser(
        "evaluate", help="eval loss of base model + adapter on JSONL data"
    )
    evaluate.add_argument("adapter", type=Path)
    evaluate.add_argument(
        "--data", type=Path, required=True, help="eval.jsonl, or a folder holding one"
    )
    evaluate.add_argument("--base-model", default="", help="default: the embedded model")
    evaluate.add_argument("--max-length", type=int, default=int(DEFAULT_RUN_CONFIG["max-length"]))
    evaluate.set_defaults(func=_cmd_adapter_evaluate)

    add_server_commands(sub, parse_override)
    add_node_commands(sub, parse_key_value)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except (SettingsError, ValueError, OSError, RuntimeError, Refused) as err:
        print(f"fedlora: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

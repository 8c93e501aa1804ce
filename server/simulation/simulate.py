"""Local simulation: N institutions in this process, the default data and the embedded model."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from pathlib import Path

from flwr.app import Context
from flwr.clientapp import ClientApp

from client.privacy.settings import STATE_DIR_KEY
from client.settings import node_settings
from common.config import DEFAULT_RUN_CONFIG, ConfigValue, SettingsError
from server.report.html import write_report
from server.run.checkpoint import saved_run_config
from server.run.federation import RunOutcome, run_federation
from server.run.settings import server_settings
from server.simulation.inprocess import InProcessGrid, node_contexts
from server.simulation.progress import LiveProgress, PlainProgress


def simulate(
    *,
    num_nodes: int = 3,
    run_config: Mapping[str, ConfigValue] | None = None,
    node_configs: list[dict[str, ConfigValue]] | None = None,
    num_threads: int | None = 0,
    echo: Callable[[str], None] = print,
    verbose: bool = False,
    state_dir: Path | None = None,
    live: bool = False,
) -> RunOutcome:
    """Run a whole federation in-process; returns the run folder, adapter folder and records.

    ``run_config`` overrides the defaults (``DEFAULT_RUN_CONFIG``), or, with ``resume-from``, the
    settings saved in that run's checkpoint; node ``i`` gets
    ``partition-id = i`` (its synthetic institution) unless ``node_configs`` says otherwise.
    Each node keeps its privacy ledger in ``state_dir/<node name>`` (default: the run folder's
    ``state/<node name>``) unless its node config sets ``state-dir``. ``live``: a live progress
    bar on this process's terminal (rich), the lines printed above it instead of through ``echo``.
    ``num_threads``: torch's CPU threads (node setting `num-threads`; 0: torch's choice, one per
    core, or what the process set); None: :func:`default_threads` (``fedlora simulate``).
    """
    if num_nodes < 1:
        raise ValueError(f"`--nodes` is {num_nodes}: use an integer >= 1")
    if num_threads is not None and num_threads < 0:
        raise ValueError(
            f"`--threads` is {num_threads}: use an integer >= 1, or 0 for torch's choice"
        )
    given = {**saved_run_config(run_config or {}), **(run_config or {})}
    config = {**DEFAULT_RUN_CONFIG, **given}
    # Simulated nodes are not enrolled: the deployment's name binding never applies here, also
    # when resuming a deployed run's checkpoint, whose settings name its federation's map.
    config["enrolled-nodes"] = ""
    if "min-nodes" not in given:
        config["min-nodes"] = min(num_nodes, int(DEFAULT_RUN_CONFIG["min-nodes"]))
    settings = server_settings(config)
    threads = default_threads(config) if num_threads is None else num_threads
    nodes = simulated_nodes(num_nodes, num_threads=threads, node_configs=node_configs)
    logging.getLogger("flwr").setLevel(logging.INFO if verbose else logging.WARNING)
    contexts = node_contexts(nodes, config)
    progress = LiveProgress() if live else PlainProgress(echo)
    grid = InProcessGrid(
        _client_app(), contexts, on_reply=progress.replied, on_push=progress.pushed
    )
    place = _state_dirs(contexts, config, root=state_dir)
    try:
        outcome = run_federation(grid, settings, echo=progress.echo, on_run_dir=place)
        progress.echo(f"[fedlora] report: {write_report(outcome.run_dir)}")
    finally:
        progress.close()
    return outcome


def default_threads(run_config: Mapping[str, ConfigValue]) -> int:
    """torch threads for simulated nodes when ``--threads`` is not given: 1 with the embedded
    model, 0 (torch's choice: one per core) with any other base model.

    The embedded model (hidden size 128) gains little from a second thread, and on shared,
    busy cores torch's threads wait on each other: a 1-round ``simulate`` took 24-37 s (median
    wall; 11 s CPU) with one thread against 87-114 s (43-51 s CPU) with torch's two, on 2 cores
    at load 4-7 (docs/configuration.md). A larger model's matrix products keep torch's threads.
    """
    return 0 if run_config.get("base-model") else 1


def simulated_nodes(
    num_nodes: int,
    *,
    num_threads: int,
    node_configs: list[dict[str, ConfigValue]] | None = None,
) -> list[dict[str, ConfigValue]]:
    """Each simulated node's node config: its partition, the torch threads, ``node_configs``."""
    nodes: list[dict[str, ConfigValue]] = [
        {"partition-id": i, "num-partitions": num_nodes, "num-threads": num_threads}
        for i in range(num_nodes)
    ]
    for i, extra in enumerate(node_configs or []):
        nodes[i].update(extra)
    return nodes


def _state_dirs(
    contexts: Mapping[int, Context], config: Mapping[str, ConfigValue], *, root: Path | None
) -> Callable[[Path], None]:
    """Give each node without a ``state-dir`` its own folder, under ``root`` or, once the server
    has made it, under the run folder."""

    def place(run_dir: Path) -> None:
        base = root if root is not None else run_dir / "state"
        for node_id, context in contexts.items():
            if not context.node_config.get(STATE_DIR_KEY):
                try:
                    name = node_settings(context.node_config, config).name
                except SettingsError:
                    name = f"node-{node_id}"  # its first instruction reports the problem
                context.node_config[STATE_DIR_KEY] = str(base / name)

    return place


def _client_app() -> ClientApp:
    from client.app import app

    return app

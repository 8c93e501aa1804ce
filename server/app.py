"""The fedlora ServerApp (``flwr run .`` and the SuperLink load ``server.app:app``)."""

from __future__ import annotations

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from server.report.html import write_report
from server.run.federation import run_federation
from server.run.settings import server_settings

app = ServerApp()


class RunStoppedError(RuntimeError):
    """The run stopped before its last round (records and checkpoint are saved)."""


@app.main()
def main(grid: Grid, context: Context) -> None:
    outcome = run_federation(grid, server_settings(context.run_config))
    write_report(outcome.run_dir)
    if outcome.stopped is not None:  # Flower then marks the run failed: `fedlora run` exits 1
        raise RunStoppedError(
            f"run stopped: {outcome.stopped}; resume with `fedlora run --resume {outcome.run_dir}`"
        )

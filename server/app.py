"""The fedlora ServerApp (``flwr run .`` and the SuperLink load ``server.app:app``)."""

from __future__ import annotations

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from server.federation import run_federation
from server.settings import server_settings

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    run_federation(grid, server_settings(context.run_config))

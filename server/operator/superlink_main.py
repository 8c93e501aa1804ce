"""``python -m server.operator.superlink_main --token-file F -- <flower-superlink args>``:
Flower 1.39's SuperLink with :class:`~server.operator.control_guard.OperatorOnly` in front of
its HTTP app.

It does what ``flower-superlink`` does (parse the same arguments, build the same FastAPI app
with Flower's own lifespan, serve it with uvicorn on ``--host``/``--port``), and wraps the app
before serving it, so there is no unguarded port at any moment. Before Flower opens its state,
its SQLite writes are set to wait for the lock (``server.operator.state_db``). Checked against
the installed ``flwr/superlink/cli/flower_superlink.py`` (``flower_superlink`` and
``_run_superlink_http_api``); flwr is pinned to 1.39.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

from server.operator.control_guard import OperatorOnly, read_secret, token_digest
from server.operator.state_db import wait_for_locks


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="fedlora-superlink")
    parser.add_argument("--token-file", type=Path, required=True)
    parser.add_argument("flower_args", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    flower_args = [a for a in args.flower_args if a != "--"]
    digest = token_digest(read_secret(args.token_file))

    import uvicorn
    from flwr.supercore.http_logging import get_uvicorn_log_config
    from flwr.supercore.logger import console_handler
    from flwr.superlink.main import create_app

    # The module (the package re-exports its function under the same name).
    flower = importlib.import_module("flwr.superlink.cli.flower_superlink")

    wait_for_locks()  # before the lifespan opens FED/flower/state.db
    sys.argv = ["flower-superlink", *flower_args]
    config = flower._parse_superlink_lifespan_config()
    app = create_app(config, flower.SuperLinkLifespan)
    uvicorn.run(
        app=OperatorOnly(app, digest=digest),
        host=config.host,
        port=config.port,
        reload=False,
        access_log=True,
        log_config=get_uvicorn_log_config(console_handler.level),
        ssl_keyfile=config.ssl_keyfile,
        ssl_certfile=config.ssl_certfile,
        workers=1,
    )


if __name__ == "__main__":
    main()

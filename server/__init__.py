"""fedlora server side: the Flower ServerApp, run records, adapter export and the CLI."""

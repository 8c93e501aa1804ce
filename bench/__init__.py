"""fedlora's benchmark suite (``make bench``): ratios measured side by side in one run.

Not tests: nothing here runs under pytest. ``python -m bench.run`` runs every section and writes
``runs/bench/bench.json`` and ``runs/bench/bench.md`` (the table in docs/performance.md).
"""

"""fedlora's server side, by concern.

- ``app.py``: the Flower ServerApp (``server.app:app``);
- ``run/``: one federated run (settings, round loop, evaluation, records, checkpoints, export);
- ``operator/``: the operator's deployment (federation folder, PKI, enrollment, Control API, runs);
- ``simulation/``: local federations in this process;
- ``compare/``: every strategy and the reference trainings on one federation;
- ``cli/``: the ``fedlora`` command.
"""

"""fedlora's node side: one institution.

- ``app.py``: the Flower ClientApp (``client.app:app``); ``settings.py``: the node's typed settings;
- ``model/``: base model, its cache, the global adapter and the node's LoRA;
- ``data/``: JSONL records and the synthetic demo institutions; ``training.py``: train and evaluate;
- ``privacy/``: DP-SGD, DP-LoRA, the ledger and the budget guard;
- ``node/``: the node admin's deployment commands (join, start).
"""

"""fedlora aggregation. No torch here.

- ``math/``: the algorithms as pure functions on numpy arrays (no Flower, no I/O);
- ``flower/``: one thin Flower ``Strategy`` per algorithm on a shared base;
- ``registry.py`` (names -> classes), ``options.py`` (typed options), ``protocol.py`` (the keys
  that travel between the ServerApp and the ClientApps).
"""

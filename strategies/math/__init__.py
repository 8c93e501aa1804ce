"""The aggregation math as pure functions on numpy arrays: no Flower, no torch, no I/O."""

"""One federated run on the server: typed settings, the round loop with evaluation, records,
checkpoints, export.
"""

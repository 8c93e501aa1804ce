"""What the server and the node both stand on: config values and the one settings error, atomic
files, daemon processes. No torch, no Flower.
"""

"""Privacy on the node: settings, DP-SGD (opacus), DP-LoRA's Gaussian release, the ledger and the
budget guard.
"""

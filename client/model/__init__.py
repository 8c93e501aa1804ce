"""The node's model: the base model loaded (and kept loaded), the global adapter, the node's fresh
LoRA.
"""

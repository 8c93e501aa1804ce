"""The public seeded LoRA ``A``: one definition for FFA-LoRA and DP-LoRA, on server and node.

FFA-LoRA (Sun et al., ICLR 2024) freezes A at a data-independent random init that every node
shares and trains only B; DP-LoRA (client/privacy/round.py) needs the same public A so that noise
on B enters ΔW = s·B·A linearly. Drawn here with numpy (no torch) so the server can rebuild the
exact A a node trains with:

    A(module, seed)[:r] ~ U(-1/√in, 1/√in)^(r × in)      peft's kaiming-uniform(a=√5) bound

Nested: the rows are drawn one after another from a generator seeded by (seed, module), so a
node of rank r uses the first r rows of the rank-R matrix (R ≥ r) and heterogeneous ranks share
one A.
"""

from __future__ import annotations

import zlib

import numpy as np
from numpy.typing import NDArray

PEFT_PREFIX = "base_model.model."


def public_lora_a(module: str, *, rank: int, in_features: int, seed: int) -> NDArray[np.float64]:
    """The public A of ``module`` (peft module name, with or without peft's prefix): (rank, in)."""
    if rank < 0 or in_features < 1:
        raise ValueError(
            f"public A of `{module}`: rank {rank} and in_features {in_features}: "
            "use rank >= 0 and in_features >= 1"
        )
    name = module.removeprefix(PEFT_PREFIX)
    rng = np.random.default_rng([seed & 0xFFFFFFFF, zlib.crc32(name.encode())])
    bound = 1.0 / np.sqrt(in_features)
    return rng.uniform(-bound, bound, size=(rank, in_features))  # (rank, in), row by row

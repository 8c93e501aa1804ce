"""DP-LoRA's Gaussian mechanism on a node's update, as pure functions on numpy arrays.

A is frozen at a data-independent seeded init and public; only B is trained (FFA-LoRA, Sun et
al., ICLR 2024). The release is this round's change to the B matrices, seen as one vector b
(B itself when it starts at zero; a public start B₀ is added back after the noise):

    b_clip  = b · min(1, C / ‖b‖₂)                    (‖b‖₂ = √Σ_modules ‖B‖_F²)
    release = b_clip + N(0, σ² Δ² I)    with Δ = 2C

Δ = 2C is the L2 sensitivity of replacing a node's *whole* data set by another: any two clipped
B's are at most 2C apart. The guarantee is per node, one Gaussian mechanism per release (RDP
α / (2σ²), opacus ``compute_rdp`` with q = 1, steps = 1). Because A is fixed, the update
ΔW = s·B·A is linear in the noise; noising A and B both would add a signal-free product term.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Protocol

import numpy as np
from numpy.typing import NDArray

Arrays = Mapping[str, NDArray[np.floating]]


class NormalSource(Protocol):
    """Where Gaussian draws come from: numpy's ``Generator`` (tests) or the node's
    ``SecureRandom`` (client/privacy/noise.py)."""

    def normal(
        self, loc: float = ..., scale: float = ..., size: tuple[int, ...] = ...
    ) -> NDArray[np.float64]: ...


# Replace-one of a node's whole data set moves a clipped release by at most 2C.
SENSITIVITY_PER_CLIP = 2.0


def total_norm(arrays: Arrays) -> float:
    """‖b‖₂ of all arrays seen as one vector (float64 accumulation)."""
    return math.sqrt(sum(float(np.sum(np.square(a, dtype=np.float64))) for a in arrays.values()))


def clip_total_norm(arrays: Arrays, *, max_norm: float) -> dict[str, NDArray[np.float64]]:
    """Scale all arrays by one factor so that their joint norm is at most ``max_norm``."""
    if not max_norm > 0:
        raise ValueError(f"`dp-clip-norm` is {max_norm}: use a number > 0")
    norm = total_norm(arrays)
    scale = 1.0 if norm <= max_norm else max_norm / norm
    return {k: np.asarray(a, np.float64) * scale for k, a in arrays.items()}


def gaussian_noise(
    arrays: Arrays, *, std: float, rng: NormalSource
) -> dict[str, NDArray[np.float64]]:
    """Each array plus independent N(0, std²) entries (keys in sorted order, for repeatability)."""
    return {k: arrays[k] + rng.normal(0.0, std, size=arrays[k].shape) for k in sorted(arrays)}


def dp_lora_release(
    b_factors: Arrays, *, clip_norm: float, noise_multiplier: float, rng: NormalSource
) -> tuple[dict[str, NDArray[np.float32]], float]:
    """Clip the B factors jointly to ``clip_norm``, add N(0, (σ·2C)²); return them (fp32) and
    the norm before clipping (which stays on the node)."""
    norm = total_norm(b_factors)
    clipped = clip_total_norm(b_factors, max_norm=clip_norm)
    std = noise_multiplier * SENSITIVITY_PER_CLIP * clip_norm
    noised = gaussian_noise(clipped, std=std, rng=rng)
    return {k: v.astype(np.float32) for k, v in noised.items()}, norm

"""The node's secret randomness: a ChaCha20 stream keyed with 256 fresh bits from the OS.

DP noise and Poisson sampling must be unpredictable to the server (it knows every run-config
seed) and to anyone who sees many releases. opacus's answer, ``secure_mode`` with
``torchcsprng``, does not exist for current torch (torchcsprng's last release, 0.2.1, targets
torch 1.8), and a ``torch.Generator`` is a Mersenne Twister with a 64-bit seed whose state can
be recovered from its outputs. So the node draws its own: one :class:`SecureRandom` per release,
keyed by ``secrets.token_bytes(32)`` (256 bits), never stored, never reused, producing
ChaCha20 keystream bytes (``cryptography``, i.e. OpenSSL), the same construction as
torchcsprng's and Linux's ``/dev/urandom``.

Gaussians come from 53-bit uniforms by Box-Muller in float64. To resist floating-point attacks
on the low bits of a textbook sampler (Mironov, CCS 2012; Jin et al., S&P 2022), each value is
the sum of four draws of std σ, halved — exactly opacus's ``secure_mode`` construction
(opacus/optimizers/optimizer.py ``_generate_noise``, after Holohan & Braghin 2021).
"""

from __future__ import annotations

import math
import secrets

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from numpy.typing import NDArray

KEY_BYTES = 32  # ChaCha20's 256-bit key
_TWO_53 = float(2**53)


class SecureRandom:
    """Uniforms, Gaussians and Bernoulli draws from a ChaCha20 keystream.

    Parameters
    ----------
    key
        32 bytes; default: fresh from ``secrets`` (the only use on a node). Tests may pass one to
        repeat a stream.
    """

    def __init__(self, key: bytes | None = None) -> None:
        key = secrets.token_bytes(KEY_BYTES) if key is None else key
        if len(key) != KEY_BYTES:
            raise ValueError(f"a ChaCha20 key has {KEY_BYTES} bytes, got {len(key)}")
        nonce = bytes(16)  # a fresh key per generator: a fixed nonce is never reused with it
        self._stream = Cipher(algorithms.ChaCha20(key, nonce), mode=None).encryptor()

    def _words(self, count: int) -> NDArray[np.uint64]:
        raw = self._stream.update(bytes(8 * count))
        return np.frombuffer(raw, dtype=np.uint64)

    def uniform(self, size: int) -> NDArray[np.float64]:
        """``size`` uniforms in [0, 1) with 53 random bits each."""
        return (self._words(size) >> np.uint64(11)).astype(np.float64) / _TWO_53

    def bernoulli(self, size: int, p: float) -> NDArray[np.bool_]:
        """``size`` independent draws that are True with probability ``p``."""
        return self.uniform(size) < p

    def _standard_normal(self, count: int) -> NDArray[np.float64]:
        pairs = (count + 1) // 2
        u1 = 1.0 - self.uniform(pairs)  # (0, 1]: log is finite
        u2 = self.uniform(pairs)
        radius = np.sqrt(-2.0 * np.log(u1))
        angle = 2.0 * math.pi * u2
        return np.concatenate([radius * np.cos(angle), radius * np.sin(angle)])[:count]

    def normal(
        self, loc: float = 0.0, scale: float = 1.0, size: int | tuple[int, ...] = ()
    ) -> NDArray[np.float64]:
        """N(loc, scale²) of shape ``size`` (numpy's ``Generator.normal`` signature), each value
        the halved sum of four draws (opacus ``secure_mode``)."""
        shape = (size,) if isinstance(size, int) else tuple(size)
        count = int(np.prod(shape, dtype=np.int64))
        draws = self._standard_normal(4 * count).reshape(4, count)
        values = (loc + scale * draws.sum(axis=0) / 2.0).reshape(shape)
        return np.asarray(values, dtype=np.float64)

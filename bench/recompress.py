"""Benchmark: FLoRA's recompression routes vs. the dense route (form B@A, full SVD).

Prints, per matrix size, the time and peak numpy memory of the exact route (QR + small SVD), the
route at the cap (Gram matrices + randomized subspace iteration) and the dense route, measured
in one run, and their ratios. The exact route agrees with the dense SVD's truncation error to
1e-8; the Gram route's error is printed over that optimum (goal <= 1.01). Run: ``make bench``.
"""

from __future__ import annotations

import argparse
import time
import tracemalloc
from collections.abc import Callable

import numpy as np

from strategies.math.lowrank import recompress, recompress_exact


def _dense(a: np.ndarray, b: np.ndarray, k: int) -> float:
    s = np.linalg.svd(b @ a, compute_uv=True)[1]  # forms the (out, in) matrix
    return float(np.sqrt(np.sum(s[k:] ** 2) / np.sum(s**2)))


def _measure(fn: Callable[[], float]) -> tuple[float, float, int]:
    tracemalloc.start()
    start = time.perf_counter()
    value = fn()
    seconds = time.perf_counter() - start
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return value, seconds, peak


def bench(dim: int, rank: int, cap: int, seed: int = 0) -> str:
    rng = np.random.default_rng(seed)
    a, b = rng.normal(size=(rank, dim)), rng.normal(size=(dim, rank))
    exact, t_qr, m_qr = _measure(lambda: recompress_exact(a, b, max_rank=cap, tol=0).relative_error)
    fast, t_gram, m_gram = _measure(lambda: recompress(a, b, max_rank=cap).relative_error)
    dense, t_dense, m_dense = _measure(lambda: _dense(a, b, cap))
    assert abs(exact - dense) <= 1e-8, (exact, dense)
    return (
        f"{dim:>5} x {dim:<5} R={rank:<4} cap={cap:<3} | qr {t_qr * 1e3:8.1f} ms "
        f"{m_qr / 1e6:6.1f} MB | gram {t_gram * 1e3:7.1f} ms {m_gram / 1e6:6.1f} MB | "
        f"dense SVD {t_dense * 1e3:9.1f} ms {m_dense / 1e6:6.1f} MB | speed-up over dense: "
        f"qr x{t_dense / t_qr:.1f} gram x{t_dense / t_gram:.1f} | err {dense:.4e}, "
        f"gram/optimal {fast / dense:.5f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--dims", default="512,1024,2048", help="comma-separated square sizes")
    parser.add_argument("--rank", type=int, default=92, help="stacked rank (64 global + 28 new)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cap", type=int, default=64)
    args = parser.parse_args()
    for dim in (int(d) for d in args.dims.split(",")):
        print(bench(dim, args.rank, args.cap, args.seed), flush=True)


if __name__ == "__main__":
    main()

"""Benchmark: FLoRA's exact recompression (QR + small SVD) vs. the dense route (form B@A, SVD).

Prints, per matrix size, the time and peak numpy memory of both routes measured in one run and
their ratios; both keep the same rank and agree on the truncation error. Run: ``make bench``.
"""

from __future__ import annotations

import argparse
import time
import tracemalloc
from collections.abc import Callable

import numpy as np

from strategies.math.lowrank import recompress


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
    ours, t_ours, m_ours = _measure(lambda: recompress(a, b, max_rank=cap).relative_error)
    dense, t_dense, m_dense = _measure(lambda: _dense(a, b, cap))
    assert abs(ours - dense) <= 1e-8, (ours, dense)
    return (
        f"{dim:>5} x {dim:<5} R={rank:<3} cap={cap:<3} | recompress {t_ours * 1e3:8.1f} ms "
        f"{m_ours / 1e6:7.1f} MB | dense SVD {t_dense * 1e3:9.1f} ms {m_dense / 1e6:7.1f} MB | "
        f"speed-up x{t_dense / t_ours:6.1f}  memory /{m_dense / m_ours:5.1f}  err {ours:.3e}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--dims", default="512,1024,2048", help="comma-separated square sizes")
    parser.add_argument("--rank", type=int, default=92, help="stacked rank (64 global + 28 new)")
    parser.add_argument("--cap", type=int, default=64)
    args = parser.parse_args()
    for dim in (int(d) for d in args.dims.split(",")):
        print(bench(dim, args.rank, args.cap), flush=True)


if __name__ == "__main__":
    main()

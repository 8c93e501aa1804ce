"""``make bench``: every section of the suite in one run; JSON and a markdown table.

Writes ``runs/bench/bench.json`` and ``runs/bench/bench.md`` (``--out``) and prints the table.
Every figure is a ratio of two routes measured side by side in this run; the goal, where the
issue sets one, stands beside it. On 2 CPU cores the whole suite takes about 7 minutes when the
machine is otherwise idle (aggregation at 100 nodes, the 135M-shape node and bf16 on a CPU
without bf16 units dominate); every strategy at 1000 nodes is in the aggregation section.
``--deploy`` (``make bench-deploy``: that section alone) adds
the deploy section: a real loopback deployment, 2 nodes (bench/deploy.py, ~15 minutes).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from bench import aggregation, deploy, node, precision, wire
from bench.common import Figure, smollm_shape_model
from bench.dp import _step_times
from bench.recompress import _dense, _measure
from client.data.synth import synth_partition
from client.model.loading import load_base
from client.training import encode
from strategies.math.lowrank import recompress


def recompress_figures(dims: tuple[int, ...] = (1024, 2048), rank: int = 92) -> list[Figure]:
    """Exact recompression (QR + small SVD) over the dense route (form B·A, full SVD)."""
    figures = []
    for dim in dims:
        rng = np.random.default_rng(0)
        a, b = rng.normal(size=(rank, dim)), rng.normal(size=(dim, rank))
        _, t_ours, m_ours = _measure(lambda a=a, b=b: recompress(a, b, max_rank=64).relative_error)
        _, t_dense, m_dense = _measure(lambda a=a, b=b: _dense(a, b, 64))
        figures.append(
            Figure(
                "recompress",
                f"{dim}×{dim}, R={rank} -> 64: speed-up over dense SVD",
                t_dense / t_ours,
                "×",
                "",
                f"{t_ours * 1e3:.0f} vs {t_dense * 1e3:.0f} ms; memory ÷{m_dense / m_ours:.1f}",
            )
        )
    return figures


def dp_figures(*, steps: int = 4, repeats: int = 2) -> list[Figure]:
    """DP-SGD step time over plain training (bench/dp.py), embedded model, rank 16."""
    _, tokenizer = load_base("", device=torch.device("cpu"))
    train, _ = synth_partition(0, n_train=8, n_eval=1)
    rows = encode([r["text"] for r in train], tokenizer, max_length=128)
    times: dict[str, list[float]] = {"none": [], "dp-sgd": []}
    for _ in range(repeats):
        for mode, found in times.items():
            found += _step_times(mode, rank=16, rows=rows, steps=steps, device="cpu")
    plain, private = (statistics.median(times[m]) for m in ("none", "dp-sgd"))
    return [
        Figure(
            "dp",
            "embedded: dp-sgd / no-DP step time",
            private / plain,
            "×",
            "<= 1.3",
            f"{private * 1e3:.0f} vs {plain * 1e3:.0f} ms/step, rank 16, batch 8",
        )
    ]


def table(figures: list[Figure]) -> str:
    lines = ["| section | figure | measured | goal | met | detail |", "|---|---|---|---|---|---|"]
    for f in figures:
        met = {True: "yes", False: "**no**", None: ""}[f.meets]
        value = f"{f.value:.3g} {f.unit}".strip()
        lines.append(f"| {f.section} | {f.name} | {value} | {f.goal} | {met} | {f.detail} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--out", type=Path, default=Path("runs/bench"))
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--agg-modules", type=int, default=2, help="7B q/v modules (of 64)")
    parser.add_argument("--deploy", action="store_true", help="the deploy section too (long)")
    parser.add_argument("--only", default="", help="comma-separated sections to run")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    smollm = smollm_shape_model(args.out / "smollm2-135m-shape")
    sections = {
        "wire": lambda: wire.run(),
        "aggregation": lambda: aggregation.run(modules=args.agg_modules),
        "node": lambda: node.run(smollm_dir=smollm),
        "precision": lambda: precision.run(smollm_dir=smollm, steps=3, threads=args.threads),
        "dp": dp_figures,
        "recompress": recompress_figures,
        "deploy": lambda: deploy.run(out=args.out, smollm_dir=smollm),
    }
    default = [s for s in sections if s != "deploy" or args.deploy]
    chosen = [s for s in args.only.split(",") if s] or default
    figures: list[Figure] = []
    seconds: dict[str, float] = {}
    for name in chosen:
        start = time.perf_counter()
        figures += sections[name]()
        seconds[name] = time.perf_counter() - start
        print(f"{name}: {seconds[name]:.0f} s", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    report = {
        "threads": torch.get_num_threads(),
        "seconds": seconds,
        "figures": [f.to_json() for f in figures],
    }
    (args.out / "bench.json").write_text(json.dumps(report, indent=2, ensure_ascii=False))
    (args.out / "bench.md").write_text(table(figures) + "\n")
    print(table(figures))


if __name__ == "__main__":
    main()

"""bf16 vs fp32 node on the 135M-shape model: step time and peak memory, side by side.

Each measurement runs in its own process (``python -m bench.precision --dtype …``) so that peak
memory is that route's alone: on CUDA ``torch.cuda.max_memory_allocated``, on CPU the process's
peak resident memory. Both routes load the base model through the node's cache in the dtype,
apply a rank-64 global adapter (merged in fp32, a frozen fp32 adapter in bf16), attach a rank-16
LoRA and train with ``train_local``; the two alternate.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from bench.common import Figure, max_rss_bytes
from client.model import cache as base_cache
from client.model.loading import DTYPES, attach_lora, pick_device
from client.settings import TrainConfig
from client.training import train_local


def measure(model_dir: str, *, dtype: str, steps: int, device: str) -> dict[str, float]:
    """Median step time after the first, and peak memory, of one node training run."""
    from bench.node import _global_adapter, _rows

    rows = _rows(model_dir, n=64, max_length=128)
    arrays = _global_adapter(model_dir, rank=64)
    dev = pick_device(device)
    model, tokenizer = base_cache.checkout(model_dir, device=dev, dtype=DTYPES[dtype],
                                           gradient_checkpointing=False)  # fmt: skip
    base_cache.apply_global(model, arrays)
    peft_model = attach_lora(model, rank=16, alpha=32, target_modules="all-linear", seed=0)
    times, last = [], time.perf_counter()

    def on_step(_: int) -> None:
        nonlocal last
        if dev.type == "cuda":
            torch.cuda.synchronize()
        now = time.perf_counter()
        times.append(now - last)
        last = now

    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    config = TrainConfig(local_steps=steps, batch_size=8, max_length=128)
    train_local(peft_model, rows, config, pad_id=tokenizer.pad_token_id, seed=0, on_step=on_step)
    peak = torch.cuda.max_memory_allocated() if dev.type == "cuda" else max_rss_bytes()
    return {"step_s": statistics.median(times[1:]), "peak_bytes": float(peak)}


def run(*, smollm_dir: Path, steps: int = 4, repeats: int = 1, device: str = "auto",
        threads: int = 2) -> list[Figure]:  # fmt: skip
    found: dict[str, list[dict[str, float]]] = {"float32": [], "bfloat16": []}
    for _ in range(repeats):
        for dtype, sink in found.items():
            cmd = [sys.executable, "-m", "bench.precision", "--model", str(smollm_dir),
                   "--dtype", dtype, "--steps", str(steps), "--device", device,
                   "--threads", str(threads)]  # fmt: skip
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            sink.append(json.loads(out.strip().splitlines()[-1]))
    step = {d: statistics.median(r["step_s"] for r in rs) for d, rs in found.items()}
    peak = {d: max(r["peak_bytes"] for r in rs) for d, rs in found.items()}
    where = "CUDA peak allocated" if "cuda" in str(pick_device(device)) else "CPU peak RSS"
    return [
        Figure("precision", "135M-shape: bf16 / fp32 step time", step["bfloat16"] / step["float32"],
               "×", "", f"{step['bfloat16'] * 1e3:.0f} vs {step['float32'] * 1e3:.0f} ms/step "
               f"({pick_device(device).type})"),
        Figure("precision", "135M-shape: bf16 / fp32 peak memory",
               peak["bfloat16"] / peak["float32"], "×", "",
               f"{peak['bfloat16'] / 1e6:.0f} vs {peak['float32'] / 1e6:.0f} MB ({where})"),
    ]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description="one route of the bf16 vs fp32 node benchmark")
    parser.add_argument("--model", required=True)
    parser.add_argument("--dtype", choices=tuple(DTYPES), required=True)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(json.dumps(measure(args.model, dtype=args.dtype, steps=args.steps, device=args.device)))


if __name__ == "__main__":
    main()

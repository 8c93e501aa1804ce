"""Benchmark: one local training step with DP-SGD (opacus) vs. without, same model and batch.

Both routes train the same fresh LoRA on the embedded model with AdamW on the same batch of
records, measured side by side in one run: plain training (``train_local``) and DP-SGD
(``train_dp_sgd`` at q = 1, so every step sees exactly that batch: per-sequence gradients,
clipping, noise). The two alternate, so load on the machine hits both alike; prints the median
step time of each and their ratio. Run: ``make bench``.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from client.data.synth import synth_partition
from client.model.loading import attach_lora, load_base, pick_device
from client.privacy.dp_sgd import train_dp_sgd
from client.settings import TrainConfig
from client.training import encode, train_local


def _step_times(
    mode: str, *, rank: int, rows: list[list[int]], steps: int, device: str
) -> list[float]:
    """Seconds of each step after the first (which pays one-off set-up)."""
    model, tokenizer = load_base("", device=torch.device(device))
    peft_model = attach_lora(model, rank=rank, alpha=2 * rank, target_modules="all-linear", seed=0)
    config = TrainConfig(local_steps=steps, batch_size=len(rows), max_length=128)
    pad_id = tokenizer.pad_token_id
    times: list[float] = []
    last = time.perf_counter()

    def on_step(_: int) -> None:
        nonlocal last
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        now = time.perf_counter()
        times.append(now - last)
        last = now

    if mode == "dp-sgd":
        train_dp_sgd(peft_model, rows, config, noise_multiplier=1.0, clip_norm=1.0,
                     sample_rate=1.0, pad_id=pad_id, seed=0, on_step=on_step)  # fmt: skip
    else:
        train_local(peft_model, rows, config, pad_id=pad_id, seed=0, on_step=on_step)
    return times[1:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--ranks", default="4,16")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    device = str(pick_device(args.device))
    _, tokenizer = load_base("", device=torch.device("cpu"))
    train, _ = synth_partition(0, n_train=args.batch_size, n_eval=1)
    rows = encode([r["text"] for r in train], tokenizer, max_length=args.max_length)
    tokens = sum(len(r) for r in rows)
    measured = args.repeats * (args.steps - 1)
    print(f"embedded model, {device}, {torch.get_num_threads()} threads, batch {len(rows)} "
          f"records ({tokens} tokens), median of {measured} steps each")  # fmt: skip
    print("| LoRA rank | none (AdamW) | dp-sgd (opacus) | ratio |")
    print("|---|---|---|---|")
    for rank in (int(r) for r in args.ranks.split(",")):
        times: dict[str, list[float]] = {"none": [], "dp-sgd": []}
        for _ in range(args.repeats):  # interleaved, so load on the machine hits both alike
            for mode, found in times.items():
                found += _step_times(mode, rank=rank, rows=rows, steps=args.steps, device=device)
        plain, private = (statistics.median(times[m]) for m in ("none", "dp-sgd"))
        print(f"| {rank} | {plain * 1e3:.0f} ms | {private * 1e3:.0f} ms | "
              f"× {private / plain:.2f} |")  # fmt: skip


if __name__ == "__main__":
    main()

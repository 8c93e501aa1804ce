"""Build the embedded default base model shipped in ``client/assets/base-model``.

The model is a tiny byte-level ``LlamaForCausalLM`` (about 0.44 M parameters) pretrained
deterministically on CPU on Python's own documentation (``pydoc_data.topics``), so the demo
has a real, if small, language model to fine-tune with LoRA without any Hugging Face hub
access.

The tokenizer maps every byte to one token (GPT-2 ByteLevel alphabet, BPE without merges)
plus the special tokens ``<s>`` (bos), ``</s>`` (eos) and ``<pad>``. It prepends ``<s>`` to
every encoded text, so each training window is ``<s>`` followed by 127 bytes.

The output folder receives only what loading needs (config, float32 safetensors weights,
tokenizer files) plus a ``README.md`` model card with the command, seed and final losses.

Usage::

    python scripts/make_base_model.py [--out client/assets/base-model] [--steps N]
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path
from pydoc_data.topics import topics

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

SEED = 0
NUM_THREADS = 2
SEQ_LEN = 128
BATCH_SIZE = 32
PEAK_LR = 3e-3
WEIGHT_DECAY = 0.01
WARMUP_FRACTION = 0.05
HOLDOUT_FRACTION = 0.05
DEFAULT_STEPS = 1600
LOG_EVERY = 100
MAX_POSITIONS = 256
KEEP_FILES = frozenset(
    {
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "README.md",
    }
)
DEFAULT_OUT = Path(__file__).resolve().parent.parent / "client" / "assets" / "base-model"


def bytes_to_unicode() -> dict[int, str]:
    """Return the GPT-2 ByteLevel mapping from each byte value to a printable character."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("\xa1"), ord("\xac") + 1))
        + list(range(ord("\xae"), ord("\xff") + 1))
    )
    mapping = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in mapping:
            mapping[b] = chr(256 + extra)
            extra += 1
    return mapping


def build_tokenizer() -> PreTrainedTokenizerFast:
    """Build the byte-level tokenizer: token id ``b`` is byte ``b``; specials follow at 256+."""
    byte_chars = bytes_to_unicode()
    vocab = {byte_chars[b]: b for b in range(256)}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        add_bos_token=True,
        add_eos_token=False,
        clean_up_tokenization_spaces=False,
        model_max_length=MAX_POSITIONS,
    )


def build_model(tokenizer: PreTrainedTokenizerFast) -> LlamaForCausalLM:
    """Build the randomly initialised tiny Llama sized to ``tokenizer``."""
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=128,
        intermediate_size=352,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=MAX_POSITIONS,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return LlamaForCausalLM(config)


def corpus_bytes() -> tuple[torch.Tensor, torch.Tensor]:
    """Return the pydoc topics corpus as byte tensors ``(train, held_out)``."""
    text = "\n\n".join(topics[key] for key in sorted(topics))
    data = torch.tensor(list(text.encode("utf-8")), dtype=torch.long)
    split = int(len(data) * (1.0 - HOLDOUT_FRACTION))
    return data[:split], data[split:]


def sample_batch(data: torch.Tensor, bos_id: int, generator: torch.Generator) -> torch.Tensor:
    """Sample ``BATCH_SIZE`` random windows of ``SEQ_LEN`` tokens, each starting with bos."""
    span = SEQ_LEN - 1
    starts = torch.randint(0, len(data) - span, (BATCH_SIZE,), generator=generator)
    windows = torch.stack([data[s : s + span] for s in starts.tolist()])
    bos = torch.full((BATCH_SIZE, 1), bos_id, dtype=torch.long)
    return torch.cat([bos, windows], dim=1)


def lr_factor(step: int, total_steps: int) -> float:
    """Linear warmup then cosine decay to 10% of the peak learning rate."""
    warmup = max(1, int(total_steps * WARMUP_FRACTION))
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total_steps - warmup)
    return 0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * progress))


def train(model: LlamaForCausalLM, data: torch.Tensor, bos_id: int, steps: int) -> float:
    """Pretrain ``model`` in place for ``steps`` steps; return the final mean loss."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=PEAK_LR, weight_decay=WEIGHT_DECAY)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, steps))
    generator = torch.Generator().manual_seed(SEED)
    recent: list[float] = []
    started = time.perf_counter()
    model.train()
    for step in range(1, steps + 1):
        batch = sample_batch(data, bos_id, generator)
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        recent = [*recent, loss.item()][-LOG_EVERY:]
        if step % LOG_EVERY == 0 or step == steps:
            mean = sum(recent) / len(recent)
            elapsed = time.perf_counter() - started
            print(f"step {step:5d}  loss {mean:.4f}  {elapsed:6.1f} s", flush=True)
    return sum(recent) / len(recent)


def held_out_batches(data: torch.Tensor, bos_id: int) -> list[torch.Tensor]:
    """Cut ``data`` into consecutive bos-prefixed windows, grouped into batches."""
    span = SEQ_LEN - 1
    n_windows = len(data) // span
    windows = data[: n_windows * span].view(n_windows, span)
    bos = torch.full((n_windows, 1), bos_id, dtype=torch.long)
    return list(torch.cat([bos, windows], dim=1).split(BATCH_SIZE))


@torch.no_grad()
def evaluate(model: LlamaForCausalLM, data: torch.Tensor, bos_id: int) -> float:
    """Return the token-weighted mean loss over all consecutive windows of ``data``."""
    model.eval()
    total, count = 0.0, 0
    for batch in held_out_batches(data, bos_id):
        n_targets = batch.numel() - len(batch)
        total += float(model(input_ids=batch, labels=batch).loss) * n_targets
        count += n_targets
    return total / count


def remove_stray_files(out_dir: Path) -> None:
    """Delete every file in ``out_dir`` that loading the model does not need."""
    for path in out_dir.iterdir():
        if path.is_file() and path.name not in KEEP_FILES:
            path.unlink()


def save(model: LlamaForCausalLM, tokenizer: PreTrainedTokenizerFast, out_dir: Path) -> None:
    """Save model (float32 safetensors) and tokenizer into ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    remove_stray_files(out_dir)
    model.float().save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    remove_stray_files(out_dir)
    for path in out_dir.iterdir():
        path.chmod(0o644)


def readme_text(steps: int, train_loss: float, held_out_loss: float, n_params: int) -> str:
    """Return the model card written next to the weights."""
    python = ".".join(str(part) for part in sys.version_info[:3])
    return f"""# Embedded default base model

A tiny byte-level `LlamaForCausalLM` ({n_params:,} parameters, float32) used as the default
base model of the fedlora demo, so that clients can fine-tune LoRA adapters fully offline.

- Architecture: 2 layers, hidden size 128, MLP 352, 4 attention heads, 256 positions,
  tied input/output embeddings.
- Tokenizer: one token per byte (GPT-2 ByteLevel alphabet, BPE with no merges; ids 0-255 are
  the byte values) plus `<s>` (bos, 256), `</s>` (eos, 257) and `<pad>` (258). Encoding
  prepends `<s>`. Any UTF-8 text round-trips exactly, except that the literal strings `<s>`,
  `</s>` and `<pad>` are read as special tokens.
- Load with `AutoTokenizer.from_pretrained(path)` and
  `AutoModelForCausalLM.from_pretrained(path)`.

## How it was made

    python scripts/make_base_model.py --steps {steps}

Deterministic on CPU (Python {python}, torch {torch.__version__}): seed {SEED}, {NUM_THREADS}
threads, {steps} AdamW steps (peak lr {PEAK_LR}, linear warmup, cosine decay), batches of
{BATCH_SIZE} random windows of {SEQ_LEN} tokens (`<s>` + {SEQ_LEN - 1} bytes) from the first
{1 - HOLDOUT_FRACTION:.0%} of the text (topics sorted by name, joined by blank lines); the last
{HOLDOUT_FRACTION:.0%} is held out.

- Final training loss (mean of the last {LOG_EVERY} steps): {train_loss:.4f} nats/token
- Held-out loss: {held_out_loss:.4f} nats/token (uniform over the vocabulary: 5.56)

## Training text and licence

The training text is `pydoc_data.topics.topics`, the help topics shipped with CPython, taken
from the Python documentation. The Python documentation is copyright the Python Software
Foundation and distributed under the PSF License Agreement (documentation examples under the
Zero-Clause BSD licence); see https://docs.python.org/3/license.html. The weights are a small
statistical model trained on that text; they contain no training state.
"""


def parse_args() -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output directory")
    parser.add_argument("--steps", type=int, default=DEFAULT_STEPS, help="training steps")
    return parser.parse_args()


def main() -> None:
    """Build, pretrain and save the base model."""
    args = parse_args()
    if args.steps < 1:
        raise SystemExit(f"--steps must be >= 1, got {args.steps}")
    started = time.perf_counter()
    torch.manual_seed(SEED)
    torch.set_num_threads(NUM_THREADS)
    torch.use_deterministic_algorithms(True)
    tokenizer = build_tokenizer()
    model = build_model(tokenizer)
    train_data, held_out = corpus_bytes()
    n_params = sum(p.numel() for p in model.parameters())
    print(f"params {n_params}  train bytes {len(train_data)}  held-out bytes {len(held_out)}")
    train_loss = train(model, train_data, tokenizer.bos_token_id, args.steps)
    held_out_loss = evaluate(model, held_out, tokenizer.bos_token_id)
    save(model, tokenizer, args.out)
    readme = readme_text(args.steps, train_loss, held_out_loss, n_params)
    (args.out / "README.md").write_text(readme, encoding="utf-8")
    weights_mb = (args.out / "model.safetensors").stat().st_size / 1e6
    elapsed = time.perf_counter() - started
    print(f"final train loss {train_loss:.4f}  held-out loss {held_out_loss:.4f}")
    print(f"saved to {args.out} ({weights_mb:.2f} MB weights) in {elapsed:.0f} s")


if __name__ == "__main__":
    main()

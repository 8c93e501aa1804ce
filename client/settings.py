"""Typed node settings, read once from Flower's ``Context`` (node config + run config).

Torch-free: the ClientApp and the node CLI both build these before anything heavy is imported.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

from common.config import DEFAULT_RUN_CONFIG, Config, ConfigReader, SettingsError

DEVICES = ("auto", "cpu", "cuda")
# node setting `dtype` (client/model/loading.py)
DTYPES = ("auto", "float32", "bfloat16", "float16")
# node setting `quantization`: the base model through bitsandbytes (client/model/quantization.py)
QUANTIZATIONS = ("none", "nf4", "int8")


@dataclass(frozen=True)
class NodeSettings:
    """What one institution's node trains with: its data, its LoRA rank and its device."""

    name: str
    partition_id: int | None
    data_path: Path | None
    lora_rank: int
    lora_alpha: float
    device: str
    base_model: str
    target_modules: str
    synth_train_examples: int
    synth_eval_examples: int
    seed: int
    dtype: str = "auto"  # auto: bf16 on CUDA where supported, else fp32
    gradient_checkpointing: bool = False
    quantization: str = "none"  # nf4 / int8: QLoRA on a CUDA GPU with bitsandbytes

    @property
    def scaling(self) -> float:
        return self.lora_alpha / self.lora_rank


def bitsandbytes_installed() -> bool:
    """bitsandbytes is importable (the optional extra ``fedlora[gpu]``); nothing is imported."""
    return importlib.util.find_spec("bitsandbytes") is not None


def quantization_problem(
    quantization: str, *, device: str, cuda_available: bool | None, installed: bool
) -> str | None:
    """Why node setting ``quantization`` cannot run here — one line naming the value and the
    fix — or None. ``cuda_available`` None: not known (``node start`` imports no torch)."""
    if quantization == "none":
        return None
    if quantization not in QUANTIZATIONS:
        return f"`quantization` is {quantization!r}: use one of {', '.join(QUANTIZATIONS)}"
    if cuda_available is False or device == "cpu":
        where = "CUDA is not available" if cuda_available is False else "`device` is 'cpu'"
        return (f"`quantization` is {quantization!r} but {where}: bitsandbytes quantizes on a "
                "CUDA GPU only; set quantization=none, or run the node on a CUDA GPU "
                "(device auto or cuda)")  # fmt: skip
    if not installed:
        return (f"`quantization` is {quantization!r} but bitsandbytes is not installed: "
                "pip install 'fedlora[gpu]' on the node, or set quantization=none")  # fmt: skip
    return None


def parse_ranks(text: str, *, field: str = "lora-ranks") -> tuple[int, ...]:
    """Parse ``"4,8,16"`` into ``(4, 8, 16)``; raise naming ``field`` on anything else."""
    try:
        ranks = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        hint = 'use comma-separated integers like "4,8,16"'
        raise SettingsError([f"`{field}` is {text!r}: {hint}"]) from None
    if not ranks or min(ranks) < 1:
        raise SettingsError([f"`{field}` is {text!r}: give at least one rank, each >= 1"])
    return ranks


def node_settings(node_config: Config, run_config: Config) -> NodeSettings:
    """Build :class:`NodeSettings` (node config wins over run config); raise `SettingsError`."""
    node = ConfigReader(node_config)
    run = ConfigReader({**DEFAULT_RUN_CONFIG, **run_config}, problems=node.problems)
    partition = node.optional("partition-id", int)
    data = node_config.get("data-path")
    data_path = Path(str(data)).expanduser() if data else None
    if data_path is None and partition is None:
        node.problems.append(
            "neither `data-path` nor `partition-id` is set: give the node its data with "
            "--node-config \"data-path='/path/to/dir'\" (train.jsonl, eval.jsonl)"
        )
    if data_path is not None and not data_path.is_dir():
        node.problems.append(
            f"`data-path` is {str(data_path)!r}, which is not a directory: point it at "
            "a folder holding train.jsonl and eval.jsonl"
        )
    rank = _node_rank(node, run, partition)
    alpha = node.optional("lora-alpha", float, default=2.0 * rank if rank else 0.0)
    if alpha is not None and alpha <= 0:
        node.problem("lora-alpha", node_config.get("lora-alpha", alpha),
                     "use a number > 0 (peft's lora_alpha)")  # fmt: skip
    device = node.get("device", str, default="auto")
    if device not in DEVICES and not device.startswith("cuda:"):
        node.problem("device", device, f"use one of {', '.join(DEVICES)} or cuda:N")
    dtype = node.choice("dtype", DTYPES, default="auto")
    checkpointing = node.get("gradient-checkpointing", bool, default=False)
    quantization = node.choice("quantization", QUANTIZATIONS, default="none")
    late = quantization_problem(quantization, device=device, cuda_available=None, installed=True)
    if quantization in QUANTIZATIONS and late:  # CUDA and the package are checked at load time
        node.problems.append(late)
    train_n = run.optional("synth-train-examples", int)
    eval_n = run.optional("synth-eval-examples", int)
    seed = run.optional("seed", int)
    node.raise_problems()
    assert train_n is not None and eval_n is not None and seed is not None
    return NodeSettings(
        name=str(node_config.get("node-name") or _default_name(partition, data_path)),
        partition_id=partition,
        data_path=data_path,
        lora_rank=rank,
        lora_alpha=float(alpha or 0.0),
        device=device,
        base_model=run.get("base-model", str),
        target_modules=run.get("target-modules", str),
        synth_train_examples=train_n,
        synth_eval_examples=eval_n,
        seed=seed,
        dtype=dtype,
        gradient_checkpointing=checkpointing,
        quantization=quantization,
    )


def _node_rank(node: ConfigReader, run: ConfigReader, partition: int | None) -> int:
    if "lora-rank" in node.config:
        rank = node.optional("lora-rank", int)
    else:
        try:
            ranks = parse_ranks(run.get("lora-ranks", str))
        except SettingsError as err:
            node.problems.extend(err.problems)
            return 0
        rank = ranks[(partition or 0) % len(ranks)]
    if rank is not None and rank < 1:
        node.problem("lora-rank", rank, "use an integer >= 1")
        return 0
    return rank or 0


def _default_name(partition: int | None, data_path: Path | None) -> str:
    if data_path is not None:
        return data_path.name
    from client.data.synth import PROFILES, profile_for_partition

    pid = partition or 0
    profile = profile_for_partition(pid)
    return profile if pid < len(PROFILES) else f"{profile}-{pid // len(PROFILES)}"


@dataclass(frozen=True)
class TrainConfig:
    """Local training hyper-parameters, chosen by the server and sent with every train message."""

    local_steps: int = 20
    batch_size: int = 8
    learning_rate: float = 3e-3
    max_length: int = 128
    seed: int = 0
    server_round: int = 0

    def __post_init__(self) -> None:
        problems = []
        for key, value in (
            ("local-steps", self.local_steps),
            ("batch-size", self.batch_size),
            ("max-length", self.max_length),
        ):
            if value < 1:
                problems.append(f"`{key}` is {value}: use an integer >= 1")
        if not (0 < self.learning_rate < 1):
            problems.append(f"`learning-rate` is {self.learning_rate}: use a value in (0, 1)")
        if problems:
            raise SettingsError(problems)

    def to_config(self) -> dict[str, int | float]:
        return {
            "local-steps": self.local_steps,
            "batch-size": self.batch_size,
            "learning-rate": self.learning_rate,
            "max-length": self.max_length,
            "seed": self.seed,
            "server-round": self.server_round,
        }

    @classmethod
    def from_config(cls, config: Config) -> TrainConfig:
        read = ConfigReader(config)
        ints = {}
        for key in ("local-steps", "batch-size", "max-length", "seed", "server-round"):
            value = read.optional(key, int)
            if value is not None:
                ints[key.replace("-", "_")] = value
        lr = read.get("learning-rate", float, default=cls.learning_rate)
        read.raise_problems()
        return cls(learning_rate=lr, **ints)

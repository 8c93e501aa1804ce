"""Typed node settings, read once from Flower's ``Context`` (node config + run config).

Torch-free: the ClientApp and the node CLI both build these before anything heavy is imported.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from common.config import DEFAULT_RUN_CONFIG, Config, ConfigValue, SettingsError

DEVICES = ("auto", "cpu", "cuda")
# node setting `dtype` (client/model/loading.py)
DTYPES = ("auto", "float32", "bfloat16", "float16")


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

    @property
    def scaling(self) -> float:
        return self.lora_alpha / self.lora_rank


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
    problems: list[str] = []
    run_config = {**DEFAULT_RUN_CONFIG, **run_config}  # missing keys take the run defaults
    partition = _opt_int(node_config, "partition-id", problems)
    data = node_config.get("data-path")
    data_path = Path(str(data)).expanduser() if data else None
    if data_path is None and partition is None:
        problems.append(
            "neither `data-path` nor `partition-id` is set: give the node its data with "
            "--node-config \"data-path='/path/to/dir'\" (train.jsonl, eval.jsonl)"
        )
    if data_path is not None and not data_path.is_dir():
        problems.append(
            f"`data-path` is {str(data_path)!r}, which is not a directory: point it at "
            "a folder holding train.jsonl and eval.jsonl"
        )
    rank = _node_rank(node_config, run_config, partition, problems)
    alpha_raw = node_config.get("lora-alpha", 2.0 * rank if rank else 0.0)
    alpha = _to_float("lora-alpha", alpha_raw, problems)
    if alpha is not None and alpha <= 0:
        problems.append(f"`lora-alpha` is {alpha_raw!r}: use a number > 0 (peft's lora_alpha)")
    device = str(node_config.get("device", "auto"))
    if device not in DEVICES and not device.startswith("cuda:"):
        problems.append(f"`device` is {device!r}: use one of {', '.join(DEVICES)} or cuda:N")
    dtype = str(node_config.get("dtype", "auto"))
    if dtype not in DTYPES:
        problems.append(f"`dtype` is {dtype!r}: use one of {', '.join(DTYPES)}")
    checkpointing = _to_bool(node_config, "gradient-checkpointing", problems)
    train_n = _opt_int(run_config, "synth-train-examples", problems)
    eval_n = _opt_int(run_config, "synth-eval-examples", problems)
    seed = _opt_int(run_config, "seed", problems)
    if problems or train_n is None or eval_n is None or seed is None:
        raise SettingsError(problems)
    return NodeSettings(
        name=str(node_config.get("node-name") or _default_name(partition, data_path)),
        partition_id=partition,
        data_path=data_path,
        lora_rank=rank,
        lora_alpha=float(alpha or 0.0),
        device=device,
        base_model=str(run_config["base-model"]),
        target_modules=str(run_config["target-modules"]),
        synth_train_examples=train_n,
        synth_eval_examples=eval_n,
        seed=seed,
        dtype=dtype,
        gradient_checkpointing=checkpointing,
    )


def _to_bool(config: Config, key: str, problems: list[str]) -> bool:
    value = config.get(key, False)
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    if not isinstance(value, bool):
        problems.append(f"`{key}` is {value!r}: use true or false")
        return False
    return value


def _node_rank(node: Config, run: Config, partition: int | None, problems: list[str]) -> int:
    if "lora-rank" in node:
        rank = _opt_int(node, "lora-rank", problems)
    else:
        try:
            ranks = parse_ranks(str(run["lora-ranks"]))
        except SettingsError as err:
            problems.extend(err.problems)
            return 0
        rank = ranks[(partition or 0) % len(ranks)]
    if rank is not None and rank < 1:
        problems.append(f"`lora-rank` is {rank}: use an integer >= 1")
        return 0
    return rank or 0


def _default_name(partition: int | None, data_path: Path | None) -> str:
    if data_path is not None:
        return data_path.name
    from client.data.synth import PROFILES, profile_for_partition

    pid = partition or 0
    profile = profile_for_partition(pid)
    return profile if pid < len(PROFILES) else f"{profile}-{pid // len(PROFILES)}"


def _opt_int(config: Config, key: str, problems: list[str]) -> int | None:
    if key not in config:
        return None
    value = config[key]
    if isinstance(value, bool) or not isinstance(value, int | str):
        problems.append(f"`{key}` is {value!r}: use an integer")
        return None
    try:
        return int(value)
    except ValueError:
        problems.append(f"`{key}` is {value!r}: use an integer")
        return None


def _to_float(key: str, value: ConfigValue, problems: list[str]) -> float | None:
    try:
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            raise TypeError
        return float(value)
    except (TypeError, ValueError):
        problems.append(f"`{key}` is {value!r}: use a number")
        return None


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
        problems: list[str] = []
        ints = {}
        for key in ("local-steps", "batch-size", "max-length", "seed", "server-round"):
            value = _opt_int(config, key, problems)
            if value is not None:
                ints[key.replace("-", "_")] = value
        lr = _to_float("learning-rate", config.get("learning-rate", cls.learning_rate), problems)
        if problems:
            raise SettingsError(problems)
        return cls(learning_rate=lr if lr is not None else cls.learning_rate, **ints)

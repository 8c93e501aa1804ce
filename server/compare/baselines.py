"""The reference arms of ``fedlora compare``: centralized LoRA on the pooled data, and each node
training alone. Same data, base model, batch size, learning rate and seeds as the federations;
each "round" is ``local-steps`` optimizer steps (``× nodes`` for ``centralized-total``) with a
fresh AdamW, as a node starts one each round, then an evaluation on every node's eval split.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any

from common.config import ConfigValue
from server.compare.arms import Arm, ArmResult


def run_reference(
    arm: Arm,
    config: Mapping[str, ConfigValue],
    node_configs: Sequence[Mapping[str, ConfigValue]],
    echo: Callable[[str], None],
) -> ArmResult:
    """Centralized (``centralized``, ``centralized-total``) or local-only (``local``) LoRA on
    the nodes of ``node_configs`` (as the federated arms of the setting see them)."""
    import torch

    from client.data.records import load_node_texts
    from client.settings import TrainConfig, node_settings
    from client.training import encode

    start = time.perf_counter()
    torch.manual_seed(int(config["seed"]))
    nodes = [node_settings(node, config) for node in node_configs]
    texts = [load_node_texts(s) for s in nodes]
    train = TrainConfig.from_config(config)
    tokenizer = _tokenizer(str(config["base-model"]))
    rows = [encode(t, tokenizer, max_length=train.max_length) for t, _ in texts]
    evals = [encode(e, tokenizer, max_length=train.max_length) for _, e in texts]
    names = [s.name for s in nodes]
    rounds = int(config["num-server-rounds"])
    if arm.kind == "local":
        trainers = [_Trainer(config, rank=s.lora_rank, alpha=s.lora_alpha) for s in nodes]
        losses = [t.run(r, [e], rounds=rounds, train=train, tag=n)
                  for t, r, e, n in zip(trainers, rows, evals, names, strict=True)]  # fmt: skip
        per_round = [[loss[t][0] for loss in losses] for t in range(rounds + 1)]
        notes = "each node alone at its own rank"
    else:
        rank = max(s.lora_rank for s in nodes)
        steps = train.local_steps * (len(nodes) if arm.kind == "centralized-total" else 1)
        pooled = [row for node_rows in rows for row in node_rows]
        trainer = _Trainer(config, rank=rank, alpha=2.0 * rank)
        train = replace(train, local_steps=steps)
        per_round = trainer.run(pooled, evals, rounds=rounds, train=train, tag=arm.kind)
        notes = f"rank {rank}, {steps} steps per round on the pooled data"
    curve = [sum(losses) / len(losses) for losses in per_round]
    echo(f"[compare] {arm.label}: mean eval loss by round " + " ".join(f"{x:.3f}" for x in curve))
    return ArmResult(arm=arm, curve=curve, final_nodes=dict(zip(names, per_round[-1], strict=True)),
                     wall_s=time.perf_counter() - start, notes=notes)  # fmt: skip


def _tokenizer(base_model: str) -> Any:
    import torch

    from client.model.loading import load_base

    return load_base(base_model, device=torch.device("cpu"))[1]


class _Trainer:
    """One LoRA on the base model, trained round by round and evaluated after each."""

    def __init__(self, config: Mapping[str, ConfigValue], *, rank: int, alpha: float) -> None:
        import torch

        from client.model.loading import attach_lora, load_base

        model, tokenizer = load_base(str(config["base-model"]), device=torch.device("cpu"))
        self.pad_id = tokenizer.pad_token_id
        self.seed = int(config["seed"])
        target = str(config["target-modules"])
        self.model = attach_lora(
            model, rank=rank, alpha=alpha, target_modules=target, seed=self.seed
        )

    def run(self, rows: Sequence[list[int]], evals: Sequence[Sequence[list[int]]], *,
            rounds: int, train: Any, tag: str) -> list[list[float]]:  # fmt: skip
        """Eval losses (one per eval set) before training and after each round."""
        from client.app import derive_seed
        from client.training import evaluate_loss, train_local

        def scores() -> list[float]:
            return [evaluate_loss(self.model, e, pad_id=self.pad_id)[0] for e in evals]

        history = [scores()]
        for server_round in range(1, rounds + 1):
            seed = derive_seed(self.seed, server_round, tag)
            train_local(self.model, rows, train, pad_id=self.pad_id, seed=seed)
            history.append(scores())
        return history

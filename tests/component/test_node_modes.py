"""The node does what the strategy's instruction says: merge or continue, public and frozen A."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from client.model import cache as base_cache
from client.model.loading import load_base, lora_factors, merge_global_adapter
from client.model.node_mode import NodeMode, global_rest, start_lora
from common.config import DEFAULT_RUN_CONFIG, SettingsError
from server.simulation.simulate import simulate
from strategies import protocol as p
from strategies.math.factors import A_SUFFIX, split_factor_keys
from strategies.math.public_a import public_lora_a


def _global(rank: int) -> dict[str, np.ndarray]:
    """A random global adapter (scaling 1) over the embedded model's LoRA modules."""
    model, _ = load_base("", device=torch.device("cpu"))
    shapes = lora_factors(
        start_lora(model, {}, mode=NodeMode(), rank=1, alpha=1.0,
                   target_modules="all-linear", seed=0, public_a_seed=None)
    )  # fmt: skip
    rng = np.random.default_rng(0)
    return {
        k: rng.normal(size=(rank, v.shape[1]) if k.endswith(A_SUFFIX) else (v.shape[0], rank))
        for k, v in shapes.items()
    }


def _start(arrays: dict[str, np.ndarray], rank: int, mode: NodeMode) -> dict[str, np.ndarray]:
    model, _ = load_base("", device=torch.device("cpu"))
    seed = mode.shared_a_seed
    peft = start_lora(model, arrays, mode=mode, rank=rank, alpha=2.0 * rank,
                      target_modules="all-linear", seed=1, public_a_seed=seed)  # fmt: skip
    return lora_factors(peft)


@pytest.mark.parametrize("rank", [4, 8])
def test_continue_starts_from_the_first_components_of_the_global(rank: int) -> None:
    arrays = _global(6)
    got, _ = split_factor_keys(_start(arrays, rank, NodeMode(p.CONTINUE, 3)))
    pairs, _ = split_factor_keys(arrays)
    k = min(rank, 6)
    for module, (a_g, b_g) in pairs.items():
        a, b = got[module]
        scaling = 2.0  # alpha / r
        np.testing.assert_allclose(scaling * b @ a, b_g[:, :k] @ a_g[:k], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("rank", [4, 8])
def test_continue_merged_starts_at_the_global_model_exactly(rank: int) -> None:
    arrays = {k: (v / 8).astype(np.float32) for k, v in _global(6).items()}
    ids = torch.tensor([[1, 72, 101, 108, 108, 111, 32, 119, 111, 114, 108, 100, 2]])
    reference, _ = load_base("", device=torch.device("cpu"))
    with torch.no_grad():
        expected = merge_global_adapter(reference, arrays)(input_ids=ids).logits
        model, _ = base_cache.checkout("", device=torch.device("cpu"), dtype=torch.float32,
                                       gradient_checkpointing=False)  # fmt: skip
        try:
            peft = start_lora(model, arrays, mode=NodeMode(p.CONTINUE_MERGED), rank=rank,
                              alpha=2.0 * rank, target_modules="all-linear", seed=1,
                              public_a_seed=None)  # fmt: skip
            got = peft(input_ids=ids).logits
        finally:
            base_cache.release()
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    # the node trains the first min(r, 6) components; only the rest is merged into W
    assert (rank < 6) == bool(global_rest(arrays, rank=rank))


def test_a_fresh_shared_a_is_the_public_seeded_a_and_freeze_leaves_only_b_trainable() -> None:
    model, _ = load_base("", device=torch.device("cpu"))
    mode = NodeMode(p.MERGE, 5, freeze_a=True)
    peft = start_lora(model, {}, mode=mode, rank=4, alpha=8.0, target_modules="all-linear",
                      seed=1, public_a_seed=5)  # fmt: skip
    pairs, _ = split_factor_keys(lora_factors(peft))
    for module, (a, _) in pairs.items():
        expected = public_lora_a(module, rank=4, in_features=a.shape[1], seed=5)
        np.testing.assert_allclose(a, expected, atol=1e-7)
    trainable = [n for n, t in peft.named_parameters() if t.requires_grad]
    assert trainable and all(".lora_B." in n for n in trainable)


def test_an_unknown_node_mode_is_an_error_naming_the_field() -> None:
    with pytest.raises(SettingsError, match="`node-mode` is 'average'"):
        NodeMode.from_config({p.NODE_MODE: "average"})


@pytest.mark.parametrize(
    ("strategy", "ranks"),
    [
        ("fedit", "4"),
        ("zeropad", "2,4"),
        ("flexlora", "2,4"),
        ("ffa", "2,4"),
        ("flora", "2,4"),
        ("flora-fresh", "2,4"),
    ],
)
def test_each_strategy_runs_a_small_federation(tmp_path: Path, strategy: str, ranks: str) -> None:
    config = {**DEFAULT_RUN_CONFIG, "strategy": strategy, "lora-ranks": ranks,
              "num-server-rounds": 2, "local-steps": 2, "batch-size": 4, "max-length": 48,
              "synth-train-examples": 16, "synth-eval-examples": 8}  # fmt: skip
    config["run-dir"] = str(tmp_path)
    outcome = simulate(num_nodes=2, run_config=config, num_threads=1, echo=lambda _: None)
    assert outcome.stopped is None
    last = outcome.records[-1]
    assert last["round"] == 2 and all(n["rejected"] is None for n in last["nodes"].values())
    first, final = outcome.records[0]["nodes"], last["nodes"]
    assert all(final[n]["eval_loss"] < first[n]["eval_loss"] for n in final)

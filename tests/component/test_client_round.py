"""One client round on a tiny model: only LoRA factors leave, merging is exact."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict

from client.app import app as client_app
from client.model.loading import load_base, merge_global_adapter, module_name, wrap_global_adapter
from client.settings import TrainConfig
from strategies import protocol as p
from strategies.flower.replies import reply_factors
from strategies.math.factors import A_SUFFIX, B_SUFFIX, join_factor_keys
from strategies.math.flora import stack
from tests.helpers import lora_factor_shapes

LLAMA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def _message(kind: str, arrays: dict[str, np.ndarray], *, steps: int = 2) -> Message:
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 1
    config = TrainConfig(local_steps=steps, batch_size=4, max_length=48, server_round=1)
    content = RecordDict(
        {p.ARRAYS: p.to_record(arrays), p.CONFIG: ConfigRecord(config.to_config())}
    )
    msg = Message(content, dst_node_id=7, message_type=kind, group_id="1")
    msg.metadata.__dict__["_message_id"] = "m1"
    return msg


def _context(base: Path, **node: object) -> Context:
    run = {"base-model": str(base), "synth-train-examples": 16, "synth-eval-examples": 8}
    node_config = {"partition-id": 1, "lora-rank": 4, "num-threads": 1, **node}
    return Context(run_id=1, node_id=7, node_config=node_config, state=RecordDict(), run_config=run)


def _train_reply(
    base: Path, arrays: dict[str, np.ndarray] | None = None, **node: object
) -> Message:
    return client_app(_message("train", arrays or {}), _context(base, **node))


def test_train_reply_carries_only_lora_factors_of_the_node_rank(embedded_dir: Path) -> None:
    reply = _train_reply(embedded_dir, **{"lora-rank": 4, "lora-alpha": 8.0})
    assert not reply.has_error(), reply.error.reason if reply.has_error() else ""
    arrays = reply_factors(reply.content)
    model, _ = load_base(str(embedded_dir), device=torch.device("cpu"))
    hidden, inter = model.config.hidden_size, model.config.intermediate_size
    layers = model.config.num_hidden_layers
    assert len(arrays) == 2 * len(LLAMA_TARGETS) * layers
    for key, value in arrays.items():
        assert key.startswith("base_model.model.model.layers.")
        assert key.endswith(A_SUFFIX) or key.endswith(B_SUFFIX)
        assert value.dtype == np.float32
        out_dim = inter if key.split(".")[-3] in ("gate_proj", "up_proj") else hidden
        in_dim = inter if key.split(".")[-3] == "down_proj" else hidden
        expected = (4, in_dim) if key.endswith(A_SUFFIX) else (out_dim, 4)
        if key.split(".")[-3] in ("k_proj", "v_proj"):
            kv = model.config.num_key_value_heads * hidden // model.config.num_attention_heads
            expected = (4, in_dim) if key.endswith(A_SUFFIX) else (kv, 4)
        assert value.shape == expected, key
    b_norm = sum(float(np.abs(v).sum()) for k, v in arrays.items() if k.endswith(B_SUFFIX))
    assert b_norm > 0, "B starts at zero: training must have moved it"
    adapter = reply.content.config_records[p.ADAPTER]
    assert adapter[p.RANK] == 4 and adapter[p.ALPHA] == 8.0
    assert reply.content.metric_records[p.METRICS][p.NUM_EXAMPLES] == 16


def _random_global(model_dir: Path, rank: int, seed: int) -> dict[str, np.ndarray]:
    """A global adapter built the way the server builds it: FLoRA-stack two random clients."""
    shapes = lora_factor_shapes(model_dir, rank=2)
    rng = np.random.default_rng(seed)
    clients = []
    for r in (rank, rank + 1):
        factors = {}
        for key, (_, in_dim) in shapes.items():
            if key.endswith(A_SUFFIX):
                out_dim = shapes[key.replace(A_SUFFIX, B_SUFFIX)][0]
                factors[key.removesuffix(A_SUFFIX)] = (
                    rng.normal(scale=0.1, size=(r, in_dim)),
                    rng.normal(scale=0.1, size=(out_dim, r)),
                    2.0,
                )
        clients.append(factors)
    stacked = stack(clients, [0.5, 0.5])
    return join_factor_keys({module: (a, b) for module, (a, b, _) in stacked.items()})


@pytest.mark.parametrize("model_fixture", ["embedded_dir", "tiny_gpt2_dir"])
def test_attached_and_merged_global_adapter_give_the_same_logits(model_fixture, request) -> None:
    model_dir = request.getfixturevalue(model_fixture)
    arrays = _random_global(model_dir, rank=3, seed=1)
    ids = torch.randint(3, 200, (2, 24), generator=torch.Generator().manual_seed(0))
    attached, _ = load_base(str(model_dir), device=torch.device("cpu"))
    attached = wrap_global_adapter(attached, arrays)
    merged, _ = load_base(str(model_dir), device=torch.device("cpu"))
    merged = merge_global_adapter(merged, arrays)
    base, _ = load_base(str(model_dir), device=torch.device("cpu"))
    with torch.no_grad():
        la, lm, lb = attached(ids).logits, merged(ids).logits, base(ids).logits
    torch.testing.assert_close(la, lm, rtol=1e-4, atol=1e-4)
    assert (la - lb).abs().max() > 1e-3, "the adapter must change the model"


@pytest.mark.parametrize("model_fixture", ["embedded_dir", "tiny_gpt2_dir"])
def test_merge_adds_exactly_b_times_a_to_each_weight(model_fixture, request) -> None:
    model_dir = request.getfixturevalue(model_fixture)
    arrays = _random_global(model_dir, rank=2, seed=2)
    base, _ = load_base(str(model_dir), device=torch.device("cpu"))
    before = {k: v.detach().double().clone() for k, v in base.state_dict().items()}
    merged = merge_global_adapter(base, arrays)
    after = merged.state_dict()
    conv1d = "gpt2" in merged.config.model_type
    for key in (k for k in arrays if k.endswith(A_SUFFIX)):
        a = arrays[key].astype(np.float64)
        b = arrays[key.replace(A_SUFFIX, B_SUFFIX)].astype(np.float64)
        delta = b @ a  # (out, in)
        if conv1d:
            delta = delta.T  # Conv1D stores (in, out)
        weight = module_name(key) + ".weight"
        got = (after[weight].double() - before[weight]).numpy()
        np.testing.assert_allclose(got, delta, rtol=1e-4, atol=1e-5)


def test_bad_node_config_is_an_error_reply_naming_the_field(embedded_dir: Path) -> None:
    reply = _train_reply(embedded_dir, **{"lora-rank": 0})
    assert reply.has_error()
    assert "`lora-rank`" in reply.error.reason


def test_gpt2_client_round_returns_conv1d_factors(tiny_gpt2_dir: Path) -> None:
    reply = _train_reply(tiny_gpt2_dir, **{"lora-rank": 3})
    assert not reply.has_error(), reply.error.reason if reply.has_error() else ""
    arrays = reply_factors(reply.content)
    c_attn_a = next(v for k, v in arrays.items() if "c_attn" in k and k.endswith(A_SUFFIX))
    c_attn_b = next(v for k, v in arrays.items() if "c_attn" in k and k.endswith(B_SUFFIX))
    assert c_attn_a.shape == (3, 32) and c_attn_b.shape == (96, 3)  # A (r, in), B (out, r)


def test_evaluate_reply_is_the_loss_only(embedded_dir: Path) -> None:
    reply = client_app(_message("evaluate", {}), _context(embedded_dir))
    assert not reply.has_error()
    assert set(reply.content.array_records) == set()
    metrics = reply.content.metric_records[p.METRICS]
    assert set(metrics) == {p.EVAL_LOSS, p.NUM_EXAMPLES} and 0 < metrics[p.EVAL_LOSS] < 10


def test_array_record_round_trip_is_exact() -> None:
    arrays = {"x.lora_A.weight": np.arange(6, dtype=np.float32).reshape(2, 3)}
    record = p.to_record(arrays)
    assert isinstance(record, ArrayRecord)
    np.testing.assert_array_equal(
        p.from_record(record)["x.lora_A.weight"], arrays["x.lora_A.weight"]
    )

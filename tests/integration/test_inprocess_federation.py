"""A whole federation in this process: heterogeneous ranks, FLoRA math checked end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import Message
from peft import PeftModel

from client.app import app as client_app
from client.data.records import load_node_texts
from client.model.loading import load_base
from client.settings import node_settings
from client.training import encode, evaluate_loss
from common.config import DEFAULT_RUN_CONFIG
from server.run.federation import run_federation
from server.run.modules import announced_modules
from server.run.runlog import read_metrics
from server.run.settings import server_settings
from server.simulation.inprocess import InProcessGrid, node_contexts
from strategies import protocol as p
from strategies.flower.replies import reply_factors
from strategies.math.factors import A_SUFFIX, B_SUFFIX

RANKS = (2, 4, 3)


def _run_config(tmp_path: Path, **extra: object) -> dict:
    return {
        **DEFAULT_RUN_CONFIG,
        "num-server-rounds": 2,
        "lora-ranks": ",".join(map(str, RANKS)),
        "local-steps": 3,
        "batch-size": 4,
        "max-length": 64,
        "synth-train-examples": 24,
        "synth-eval-examples": 12,
        "min-nodes": 3,
        "node-wait-s": 5.0,
        "run-dir": str(tmp_path / "runs"),
        **extra,
    }


@pytest.fixture(scope="module")
def federation(tmp_path_factory: pytest.TempPathFactory):
    """Run once: 3 nodes x 2 rounds, capturing every train reply the server receives. The
    paper's FLoRA (fresh B each round): the global is the sum of the replies' products
    (tests/integration/test_flora_continue_federation.py checks the continuing `flora`)."""
    tmp_path = tmp_path_factory.mktemp("fed")
    config = _run_config(tmp_path, strategy="flora-fresh")
    nodes = [{"partition-id": i, "num-partitions": 3, "num-threads": 1} for i in range(3)]
    # The third node has a larger training set: FLoRA must weight it by n_i.
    nodes[2]["lora-alpha"] = 12.0
    replies: list[tuple[int, Message]] = []

    def capture(msg: Message, reply: Message) -> None:
        if msg.metadata.message_type == "train":
            replies.append((int(msg.metadata.group_id), reply))

    grid = InProcessGrid(client_app, node_contexts(nodes, config), on_reply=capture)
    outcome = run_federation(grid, server_settings(config), echo=lambda _: None)
    return outcome, replies, config, nodes


def _dense_update(replies: list[Message]) -> dict[str, np.ndarray]:
    """The float64 reference: sum_i p_i s_i B_i A_i over one round's replies."""
    total = sum(r.content.metric_records[p.METRICS][p.NUM_EXAMPLES] for r in replies)
    dense: dict[str, np.ndarray] = {}
    modules = announced_modules(DEFAULT_RUN_CONFIG["base-model"], "all-linear")
    for reply in replies:
        arrays = reply_factors(reply.content, modules)  # names sent as the instruction's digest
        adapter = reply.content.config_records[p.ADAPTER]
        weight = reply.content.metric_records[p.METRICS][p.NUM_EXAMPLES] / total
        scaling = adapter[p.ALPHA] / adapter[p.RANK]
        for key, a in arrays.items():
            if key.endswith(A_SUFFIX):
                b = arrays[key.replace(A_SUFFIX, B_SUFFIX)].astype(np.float64)
                term = weight * scaling * b @ a.astype(np.float64)
                module = key.removesuffix(A_SUFFIX)
                dense[module] = dense.get(module, 0) + term
    return dense


def test_metrics_record_every_round_and_node(federation) -> None:
    outcome, _, _, _ = federation
    records = read_metrics(outcome.run_dir)
    assert [r["round"] for r in records] == [0, 1, 2]
    for record in records:
        assert len(record["nodes"]) == 3
        assert all(n["eval_loss"] > 0 for n in record["nodes"].values())
    assert records[1]["global_rank"] == sum(RANKS)  # stacking: R = sum r_i, cap 64 not reached
    assert records[2]["global_rank"] == 2 * sum(RANKS)
    assert records[1]["recompress_error"] < 1e-10
    ranks = {name: n["rank"] for name, n in records[1]["nodes"].items()}
    assert sorted(ranks.values()) == sorted(RANKS)
    assert records[1]["bytes_down"] == 0 and records[2]["bytes_down"] > 0
    assert records[1]["bytes_up"] > 0
    for name, node in records[-1]["nodes"].items():
        assert node["eval_loss"] < records[0]["nodes"][name]["eval_loss"], name
    settings = json.loads((outcome.run_dir / "settings.json").read_text())
    assert settings["num_rounds"] == 2


def test_exported_adapter_equals_the_flora_sum_over_rounds(federation) -> None:
    outcome, replies, _, _ = federation
    assert len(replies) == 6 and not any(r.has_error() for _, r in replies)
    reference: dict[str, np.ndarray] = {}
    for rnd in (1, 2):
        for module, delta in _dense_update([r for g, r in replies if g == rnd]).items():
            reference[module] = reference.get(module, 0) + delta
    from safetensors.numpy import load_file

    saved = load_file(str(outcome.adapter_dir / "adapter_model.safetensors"))
    config = json.loads((outcome.adapter_dir / "adapter_config.json").read_text())
    assert config["r"] == config["lora_alpha"] == 2 * sum(RANKS)
    for module, delta in reference.items():
        a = saved[module + A_SUFFIX].astype(np.float64)
        b = saved[module + B_SUFFIX].astype(np.float64)
        err = np.linalg.norm(b @ a - delta) / np.linalg.norm(delta)
        assert err < 1e-5, module


def test_exported_adapter_reproduces_a_nodes_last_eval_loss(federation) -> None:
    outcome, _, config, nodes = federation
    last = read_metrics(outcome.run_dir)[-1]
    settings = node_settings(nodes[1], config)
    base, tokenizer = load_base("", device=torch.device("cpu"))
    model = PeftModel.from_pretrained(base, str(outcome.adapter_dir))
    _, eval_texts = load_node_texts(settings)
    rows = encode(eval_texts, tokenizer, max_length=int(config["max-length"]))
    loss, _ = evaluate_loss(model, rows, pad_id=tokenizer.pad_token_id)
    assert loss == pytest.approx(last["nodes"][settings.name]["eval_loss"], abs=1e-5)


def test_a_failing_node_is_skipped_and_recorded(tmp_path: Path) -> None:
    config = _run_config(tmp_path, **{"num-server-rounds": 1, "min-nodes": 2})
    nodes = [
        {"partition-id": 0, "num-threads": 1},
        {"partition-id": 1, "num-threads": 1, "data-path": str(tmp_path)},  # no JSONL there
    ]
    grid = InProcessGrid(client_app, node_contexts(nodes, config))
    outcome = run_federation(grid, server_settings(config), echo=lambda _: None)
    record = read_metrics(outcome.run_dir)[1]
    bad = record["nodes"]["node-1002"]  # an error reply has no content, so no node name
    assert "train.jsonl" in bad["rejected"] and bad["rank"] is None
    assert record["aggregated"] and record["global_rank"] == RANKS[0]


def test_server_held_data_is_scored_every_round(tmp_path: Path) -> None:
    from client.data.synth import write_partition

    held = write_partition(tmp_path / "held", 2, n_train=1, n_eval=8, seed=9) / "eval.jsonl"
    config = _run_config(tmp_path, **{"num-server-rounds": 1, "min-nodes": 2})
    config["server-eval-data"] = str(held)
    nodes = [{"partition-id": i, "num-threads": 1} for i in range(2)]
    grid = InProcessGrid(client_app, node_contexts(nodes, config))
    outcome = run_federation(grid, server_settings(config), echo=lambda _: None)
    records = read_metrics(outcome.run_dir)
    assert all(r["server_eval_loss"] > 0 for r in records)
    assert records[1]["server_eval_loss"] != records[0]["server_eval_loss"]

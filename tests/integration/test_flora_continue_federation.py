"""FLoRA with continuing nodes end to end: real nodes (tiny model), and the exported adapter
equals the float64 reference of the global plus each round's stacked changes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from flwr.app import Message
from safetensors.numpy import load_file

from client.app import app as client_app
from common.config import DEFAULT_RUN_CONFIG
from server.run.federation import run_federation
from server.run.modules import announced_modules
from server.run.settings import server_settings
from server.simulation.inprocess import InProcessGrid, node_contexts
from strategies import protocol as p
from strategies.flower.replies import reply_factors
from strategies.math.factors import A_SUFFIX, B_SUFFIX, split_factor_keys
from strategies.math.flora import node_start


def _dense(pairs: dict) -> dict[str, np.ndarray]:
    return {m: b.astype(np.float64) @ a.astype(np.float64) for m, (a, b) in pairs.items()}


def test_exported_adapter_is_the_sum_of_the_nodes_changes(tmp_path: Path) -> None:
    config = {**DEFAULT_RUN_CONFIG, "strategy": "flora", "num-server-rounds": 3,
              "lora-ranks": "2,4,3", "local-steps": 3, "batch-size": 4, "max-length": 48,
              "synth-train-examples": 16, "synth-eval-examples": 8, "min-nodes": 3,
              "run-dir": str(tmp_path)}  # fmt: skip
    nodes = [{"partition-id": i, "num-partitions": 3, "num-threads": 1} for i in range(3)]
    rounds: dict[int, list[tuple[Message, Message]]] = {}

    def capture(msg: Message, reply: Message) -> None:
        if msg.metadata.message_type == "train":
            rounds.setdefault(int(msg.metadata.group_id), []).append((msg, reply))

    grid = InProcessGrid(client_app, node_contexts(nodes, config), on_reply=capture)
    outcome = run_federation(grid, server_settings(config), echo=lambda _: None)
    assert outcome.stopped is None and sorted(rounds) == [1, 2, 3]

    reference: dict[str, np.ndarray] = {}
    modules = announced_modules(config["base-model"], config["target-modules"])  # names by digest
    for server_round in (1, 2, 3):
        pairs = rounds[server_round]
        sent, _ = split_factor_keys(p.from_record(pairs[0][0].content.array_records[p.ARRAYS]))
        assert set(_dense(sent)) == set(reference) and all(
            np.allclose(d, reference[m], atol=1e-6) for m, d in _dense(sent).items()
        )  # every node was sent the reference global
        total = sum(r.content.metric_records[p.METRICS][p.NUM_EXAMPLES] for _, r in pairs)
        for msg, reply in pairs:
            assert msg.content.config_records[p.CONFIG][p.NODE_MODE] == p.CONTINUE_MERGED
            factors, _ = split_factor_keys(reply_factors(reply.content, modules))
            adapter = reply.content.config_records[p.ADAPTER]
            scaling = float(adapter[p.ALPHA]) / int(adapter[p.RANK])
            weight = reply.content.metric_records[p.METRICS][p.NUM_EXAMPLES] / total
            start = node_start(sent, rank=int(adapter[p.RANK]), scaling=scaling) if sent else {}
            for module, (a, b) in factors.items():
                change = scaling * b.astype(np.float64) @ a.astype(np.float64)
                if module in start:
                    a0, b0 = start[module]
                    change -= scaling * b0.astype(np.float64) @ a0.astype(np.float64)
                reference[module] = reference.get(module, 0.0) + weight * change

    saved = load_file(str(outcome.adapter_dir / "adapter_model.safetensors"))
    for module, delta in reference.items():
        a = saved[module + A_SUFFIX].astype(np.float64)
        b = saved[module + B_SUFFIX].astype(np.float64)
        assert np.linalg.norm(b @ a - delta) <= 1e-5 * np.linalg.norm(delta), module

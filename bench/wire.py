"""Wire: bytes per node per round as Flower 1.39 serializes them, over the raw factor bytes.

Flower sends a message as a tree of content-addressed objects (message, record dict, records,
arrays, array chunks; ``flwr.supercore.inflatable``): the bytes on the wire are the sum of the
deflated objects, which is what is measured here. Uplink: one train reply (the node's factors
as one flat vector, metrics, the adapter record with the layout, the privacy record), beside
the layout before issue 14 (one Flower array per factor). Downlink: one train instruction (the
global adapter after FLoRA aggregation, capped at ``max-global-rank``, and the training
config). Compared with the raw factor bytes Σ r·(in+out)·4, with sending the full ΔW
(Σ out·in·4) and the full fp32 model.
Factors are random (zeros would be deduplicated chunk by chunk and flatter the figure).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from flwr.app import ConfigRecord, Message, MetricRecord, RecordDict
from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects
from flwr.supercore.task_identity import TaskIdentity
from numpy.typing import NDArray

from bench.common import Figure
from client.settings import TrainConfig
from strategies import protocol as p
from strategies.math.factors import A_SUFFIX, B_SUFFIX, join_factor_keys, split_factor_keys
from strategies.math.flora import stack
from strategies.math.lowrank import accumulate
from strategies.math.packing import module_digest

Arrays = dict[str, NDArray[np.float32]]
Shapes = dict[str, tuple[int, int]]  # module -> (in, out)
CAP = 64  # the default `max-global-rank`
# Llama-2-7B: 32 layers, hidden 4096, MLP 11008, vocabulary 32000, untied head.
LLAMA7B_LAYER = {
    "self_attn.q_proj": (4096, 4096),
    "self_attn.k_proj": (4096, 4096),
    "self_attn.v_proj": (4096, 4096),
    "self_attn.o_proj": (4096, 4096),
    "mlp.gate_proj": (4096, 11008),
    "mlp.up_proj": (4096, 11008),
    "mlp.down_proj": (11008, 4096),
}
LLAMA7B_PARAMS = 2 * 32000 * 4096 + 32 * (4 * 4096**2 + 3 * 4096 * 11008 + 2 * 4096) + 4096


def llama7b_shapes(layers: int = 32) -> Shapes:
    """Every linear module of Llama-7B's decoder layers (all-linear targets)."""
    return {
        f"base_model.model.model.layers.{i}.{name}": dims
        for i in range(layers)
        for name, dims in LLAMA7B_LAYER.items()
    }


def random_factors(shapes: Shapes, rank: int, rng: np.random.Generator) -> Arrays:
    """Peft-named factors A (rank, in) and B (out, rank), random fp32."""
    arrays: Arrays = {}
    for module, (fan_in, fan_out) in shapes.items():
        arrays[module + A_SUFFIX] = rng.standard_normal((rank, fan_in), dtype=np.float32)
        arrays[module + B_SUFFIX] = rng.standard_normal((fan_out, rank), dtype=np.float32)
    return arrays


def wire_bytes(content: RecordDict, *, reply: bool) -> int:
    """Bytes of every object Flower pushes for one message carrying ``content``."""
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 1
    msg = Message(content, dst_node_id=2, message_type="train")
    if reply:
        msg = Message(content, reply_to=Message(RecordDict(), dst_node_id=2, message_type="train"))
    objects = get_all_nested_objects(msg)
    return sum(len(obj.deflate()) for obj in objects.values())


def uplink_bytes(factors: Arrays, rank: int, *, per_factor: bool = False) -> int:
    """One train reply as client/app.py builds it: the factors as one flat vector whose module
    names travel as the instruction's digest. ``per_factor``: the layout before issue 14, one
    Flower array per factor with its peft key name."""
    metrics = MetricRecord(
        {p.NUM_EXAMPLES: 256, p.TRAIN_LOSS: 2.5, p.TRAIN_LOSS_FIRST: 3.0, p.TRAIN_SECONDS: 8.0}
    )
    if per_factor:
        arrays, layout = p.to_record(factors), {}
    else:
        digest = module_digest(split_factor_keys(factors)[0])
        arrays, layout = p.pack_factors(factors, modules_digest=digest)
    adapter = ConfigRecord(
        {
            p.RANK: rank,
            p.ALPHA: 2.0 * rank,
            p.NODE_NAME: "hospital-0",
            p.GLOBAL_FINGERPRINT: "0" * 32,  # as long as strategies.math.validation.fingerprint
            **layout,
        }
    )
    content = RecordDict(
        {
            p.ARRAYS: arrays,
            p.METRICS: metrics,
            p.ADAPTER: adapter,
            p.PRIVACY: ConfigRecord({p.DP_MODE: "none"}),
        }
    )
    return wire_bytes(content, reply=True)


def downlink_bytes(global_arrays: Mapping[str, NDArray[np.floating]]) -> int:
    """One train instruction: the global adapter and the training config."""
    config = ConfigRecord(
        {**TrainConfig().to_config(), p.GLOBAL_FINGERPRINT: "0" * 64, p.NODE_MODE: p.MERGE}
    )
    content = RecordDict({p.ARRAYS: p.to_record(global_arrays), p.CONFIG: config})
    return wire_bytes(content, reply=False)


def flora_global(shapes: Shapes, ranks: list[int], rng: np.random.Generator) -> Arrays:
    """The global adapter after one FLoRA round of nodes with ``ranks`` (cap ``CAP``)."""
    updates = []
    for rank in ranks:
        pairs, _ = split_factor_keys(random_factors(shapes, rank, rng))
        updates.append({m: (a, b, 2.0) for m, (a, b) in pairs.items()})
    stacked = stack(updates, [1.0 / len(ranks)] * len(ranks))
    adapter = accumulate({}, stacked, max_rank=CAP).adapter
    return {k: v.astype(np.float32) for k, v in join_factor_keys(adapter).items()}


def raw_bytes(arrays: Mapping[str, NDArray[np.floating]]) -> int:
    """Σ r·(in+out)·4: the factors' own bytes in fp32."""
    return sum(int(v.size) * 4 for v in arrays.values())


def dense_bytes(shapes: Shapes) -> int:
    """Σ out·in·4: the full ΔW of the targeted modules in fp32."""
    return sum(fan_in * fan_out * 4 for fan_in, fan_out in shapes.values())


def embedded_shapes() -> tuple[Shapes, int]:
    """The embedded model's LoRA modules (all-linear) and its parameter count."""
    import torch

    from client.model.loading import attach_lora, load_base, lora_factors

    model, _ = load_base("", device=torch.device("cpu"))
    params = sum(p.numel() for p in model.parameters())
    factors = lora_factors(
        attach_lora(model, rank=1, alpha=1.0, target_modules="all-linear", seed=0)
    )
    pairs, _ = split_factor_keys(factors)
    return {m: (a.shape[1], b.shape[0]) for m, (a, b) in pairs.items()}, params


def model_figures(
    label: str, shapes: Shapes, params: int, *, ranks: list[int], downlinks: dict[int, Arrays]
) -> list[Figure]:
    """Uplink per rank, downlink per federation size, against raw, ΔW and full-model bytes."""
    rng = np.random.default_rng(0)
    figures = []
    for rank in ranks:
        factors = random_factors(shapes, rank, rng)
        up, raw = uplink_bytes(factors, rank), raw_bytes(factors)
        before = uplink_bytes(factors, rank, per_factor=True)
        figures += [
            Figure(
                "wire",
                f"{label}: uplink / raw factor bytes, rank {rank}",
                up / raw,
                "×",
                "<= 1.02",
                f"{up / raw:.4f} ×, {up / 1e6:.4f} MB vs {raw / 1e6:.4f} MB; one array per "
                f"factor: {before / raw:.4f} ×",
            ),
            Figure(
                "wire",
                f"{label}: uplink / full ΔW, rank {rank}",
                up / dense_bytes(shapes),
                "×",
                "",
                f"ΔW {dense_bytes(shapes) / 1e6:.1f} MB",
            ),
            Figure(
                "wire",
                f"{label}: uplink / full fp32 model, rank {rank}",
                up / (4 * params),
                "×",
                "",
                f"model {4 * params / 1e6:.1f} MB",
            ),
        ]
    down = {n: downlink_bytes(arrays) for n, arrays in downlinks.items()}
    nodes = sorted(down)
    for n in nodes[1:]:
        figures.append(
            Figure(
                "wire",
                f"{label}: downlink at {n} nodes / at {nodes[0]} nodes",
                down[n] / down[nodes[0]],
                "×",
                "<= 1.02",
                f"{down[n] / 1e6:.3f} MB vs {down[nodes[0]] / 1e6:.3f} MB",
            )
        )
    return figures


def run(*, llama_layers: int = 32) -> list[Figure]:
    """The embedded model (ranks 4, 8, 16; FLoRA globals after 3 to 100 nodes) and Llama-7B
    shapes (rank 16; the downlink is a rank-``CAP`` global, which FLoRA reaches at 4 nodes)."""
    rng = np.random.default_rng(1)
    shapes, params = embedded_shapes()
    ranks = [4, 8, 16]
    globals_ = {
        n: flora_global(shapes, [ranks[i % 3] for i in range(n)], rng) for n in (3, 10, 100)
    }
    figures = [
        Figure(
            "wire",
            "embedded: downlink at 3 nodes (stacked rank 28 < cap) / raw",
            downlink_bytes(globals_[3]) / raw_bytes(globals_[3]),
            "×",
            "",
            f"{downlink_bytes(globals_[3]) / 1e6:.3f} MB",
        )
    ]
    del globals_[3]
    figures += model_figures("embedded", shapes, params, ranks=ranks, downlinks=globals_)
    big = llama7b_shapes(llama_layers)
    cap_global = random_factors(big, CAP, rng)
    figures += model_figures("Llama-7B shapes", big, LLAMA7B_PARAMS, ranks=[16], downlinks={})
    down = downlink_bytes(cap_global)
    figures.append(
        Figure(
            "wire",
            f"Llama-7B shapes: downlink (global at cap {CAP}) / raw",
            down / raw_bytes(cap_global),
            "×",
            "",
            f"{down / 1e6:.1f} MB",
        )
    )
    return figures

"""Where the base model goes with ``device = auto`` when several GPUs are visible.

A model that fits on one GPU goes on the one with the most free memory; one that does not is
spread over all of them with accelerate's device map (``device_map="auto"`` with ``max_memory``
per GPU), and the node log says so. The decision is the pure ``client.model.memory.place``; this
module takes the inventory (free memory per GPU) and sizes the model on the meta device.
"""

from __future__ import annotations

import logging

import torch
from transformers import AutoConfig, AutoModelForCausalLM

from client.model.memory import Placement, held_bytes, place

logger = logging.getLogger("flwr")  # Flower's logger: the node log


def model_bytes(path: str, *, dtype: torch.dtype, quantization: str, offline: bool) -> int:
    """The base model's weights in bytes as they will be held, counted on the meta device (no
    weights read)."""
    from accelerate import init_empty_weights

    config = AutoConfig.from_pretrained(path, local_files_only=offline)
    with init_empty_weights():
        meta = AutoModelForCausalLM.from_config(config)  # type: ignore[no-untyped-call]
    meta.tie_weights()  # as from_pretrained does (not inside init_empty_weights, where it is lost)
    head = meta.get_output_embeddings()
    quantizable = {  # bitsandbytes quantizes the linear layers, never the LM head
        id(q)
        for m in meta.modules()
        if isinstance(m, torch.nn.Linear) and m is not head
        for q in m.parameters(recurse=False)
    }
    linear = other = 0
    for param in meta.parameters():  # a tied weight once
        if id(param) in quantizable:
            linear += param.numel()
        else:
            other += param.numel()
    mode = quantization if quantization != "none" else str(dtype).removeprefix("torch.")
    return held_bytes(linear=linear, other=other, mode=mode)


def plan(path: str, *, dtype: torch.dtype, quantization: str, offline: bool) -> Placement:
    """One GPU, or a device map over all visible GPUs (``memory.place``); logged when spread or
    when the model does not fit."""
    count = torch.cuda.device_count()
    if count < 2:
        return Placement("cuda" if count else "cpu", None, "one device")
    free = [torch.cuda.mem_get_info(i)[0] for i in range(count)]
    size = model_bytes(path, dtype=dtype, quantization=quantization, offline=offline)
    placement = place(model_bytes=size, free=free)
    if placement.max_memory is not None or "does not fit" in placement.reason:
        logger.info("[fedlora] %s", placement.reason)
    return placement

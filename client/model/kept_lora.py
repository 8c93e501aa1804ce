"""The node's LoRA layers kept attached to the cached base model between messages.

peft's ``get_peft_model`` attaching a fresh LoRA to every linear module costs more than all the
rest of a message's overhead on a real model (210 modules of SmolLM2-135M: 420 ``nn.Linear``
built and the module tree walked per module; docs/performance.md). The base-model cache
(client/model/cache.py) therefore keeps the layers of the node's ``default`` adapter attached
after a message, switched off (each layer's forward is its base layer's, bit for bit), and the
next message with the same LoRA config gets them back with the values a fresh attach draws:

- ``torch.manual_seed(seed)``, then for each LoRA layer in module order what peft's
  ``LoraLayer.update_layer`` draws: ``nn.Linear(in, r)``'s own init of A and ``nn.Linear(r,
  out)``'s of B (``kaiming_uniform_(a=√5)``, on the CPU in fp32, as the layers are built), then
  ``reset_lora_parameters``: A ``kaiming_uniform_(a=√5)`` again, B zero; A rounded to the base
  layer's dtype and back, as peft moves new layers to it and then (``autocast_adapter_dtype``)
  back to fp32. So A, B and the global RNG state after the attach are bitwise those of
  ``get_peft_model`` on the bare model;
- the adapter switched on and trainable, everything else frozen, and the input-gradient hook of
  gradient checkpointing, as ``PeftModel.__init__`` leaves them.

The private ``personal`` adapter (client/model/personal.py) is deleted when the message ends; it
is added afresh (or from the node's file) each message, as before. Not kept: under dp-sgd
(opacus's ``GradSampleModule`` sees freshly built layers, as before; the caller asks for a fresh
attach) and on quantized base models (peft's bitsandbytes layers, not tested without a GPU).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any

import torch
from peft import PeftModel
from peft.tuners.lora import LoraLayer
from peft.tuners.tuners_utils import BaseTunerLayer

ADAPTER = "default"  # peft's name for the adapter a node trains (and the only one kept)
_A = math.sqrt(5)  # nn.Linear's and peft's kaiming_uniform_ slope


@dataclass(frozen=True)
class LoraKey:
    """What makes a kept LoRA the one a fresh attach would build."""

    rank: int
    alpha: float
    target_modules: str
    fan_in_fan_out: bool


def layers(model: torch.nn.Module) -> list[LoraLayer]:
    """The model's LoRA layers in module order (the order peft attaches them in)."""
    return [m for m in model.modules() if isinstance(m, LoraLayer)]


def reuse(peft_model: PeftModel, *, seed: int) -> PeftModel:
    """Bring a parked LoRA back with the values and flags a fresh attach with ``seed`` gives."""
    model: Any = peft_model.base_model.model
    torch.manual_seed(seed)
    found = layers(model)
    with torch.no_grad():
        for layer in found:
            _redraw(layer)
    model.requires_grad_(False)  # the base model frozen, as peft marks it
    for layer in found:
        layer.enable_adapters(True)  # active again, and its A and B trainable
    with warnings.catch_warnings():  # peft probes a transformers property deprecated in v5
        warnings.filterwarnings(
            "ignore", message=".*is_gradient_checkpointing", category=FutureWarning
        )
        if getattr(model, "is_gradient_checkpointing", True):  # as PeftModel.__init__
            peft_model.prepare_model_for_gradient_checkpointing(model)
    return peft_model


def _redraw(layer: LoraLayer) -> None:
    """A and B as ``update_layer`` leaves them: the draws of both layers' builds, then peft's."""
    a = _weight(layer.lora_A[ADAPTER])  # (r, in)
    b = _weight(layer.lora_B[ADAPTER])  # (out, r)
    draw = torch.empty(a.shape, dtype=torch.float32)  # as nn.Linear(in, r) is built: CPU, fp32
    torch.nn.init.kaiming_uniform_(draw, a=_A)  # nn.Linear(in, r).reset_parameters()
    torch.nn.init.kaiming_uniform_(torch.empty(b.shape, dtype=torch.float32), a=_A)  # (r, out)'s
    torch.nn.init.kaiming_uniform_(draw, a=_A)  # peft's reset_lora_parameters
    base = _weight(layer.get_base_layer()).dtype
    if base.is_floating_point:  # peft moves the new layers to the base layer's dtype, and its
        draw = draw.to(base)  # autocast_adapter_dtype back to fp32: A carries that rounding
    a.copy_(draw)
    b.zero_()


def _weight(module: Any) -> torch.Tensor:
    weight = module.weight
    assert isinstance(weight, torch.Tensor)
    return weight


def park(peft_model: PeftModel, key: LoraKey) -> bool:
    """Switch the kept LoRA off (its layers forward their base layers only) after a message;
    False if the model holds anything but the ``default`` adapter's layers as ``key`` built
    them (then unwrap it)."""
    if "personal" in peft_model.peft_config:
        peft_model.delete_adapter("personal")
    if list(peft_model.peft_config) != [ADAPTER]:
        return False
    model: Any = peft_model.base_model.model
    for module in model.modules():
        if not isinstance(module, BaseTunerLayer):
            continue
        if not isinstance(module, LoraLayer) or list(module.lora_A) != [ADAPTER]:
            return False
        if module.r[ADAPTER] != key.rank or module.scaling[ADAPTER] != key.alpha / key.rank:
            return False
        if module.merged or isinstance(module.get_base_layer(), BaseTunerLayer):
            return False
        module.enable_adapters(False)
    return True


def unwrap(model: torch.nn.Module) -> None:
    """Take every peft layer out of ``model``: each module is its base layer again."""
    for name, module in list(model.named_modules()):
        if isinstance(module, BaseTunerLayer) and "." in name:
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent), child, module.get_base_layer())
    model.__dict__.pop("peft_config", None)

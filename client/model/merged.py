"""What a cached base model's weights hold beyond the loaded ones: the global adapter, merged.

On fp32 weights the global adapter ``(B_g, A_g)`` (scaling 1) is merged: ``W = W0 + B_g·A_g``, one
fused multiply-add per module, bitwise peft's ``W += B @ A``. A copy of a module's loaded weight
W0 is kept once a merge first touches it (:meth:`MergedWeights.keep_loaded`), and
:class:`MergedWeights` records which modules differ from W0 and, while the weights hold exactly one
global adapter, that adapter. Nothing is copied back when a message ends: the next message writes
each weight it needs once — ``W0 + B_g·A_g`` from the kept copy for a module of its adapter, W0
for any other changed module — and nothing at all when its adapter is the one the weights hold.

In bf16/fp16 the global update is not merged: ``B_g·A_g`` is far below the weights' rounding step
and merging would lose much of it. Each targeted layer instead gets a forward hook adding
``(x A_gᵀ) B_gᵀ`` in fp32 to its output — what peft computes for an unmerged fp32 adapter.
The same holds for a quantized base model (its 4-/8-bit weights are never merged into) and for a
model spread over several GPUs (no room for the kept copies).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from peft.tuners.tuners_utils import BaseTunerLayer
from torch.utils.hooks import RemovableHandle
from transformers import PreTrainedModel

from client.model.loading import float_tensor, module_name
from client.model.quantization import is_quantized
from strategies.math.factors import A_SUFFIX, B_SUFFIX

Arrays = Mapping[str, NDArray[np.floating]]


def frozen(arrays: Arrays) -> dict[str, NDArray[np.floating]]:
    """``arrays`` as read-only arrays nobody can change later: a read-only view of a message's
    bytes (strategies.protocol.view_record) is kept as is, anything writable is copied."""
    kept = {}
    for key, value in arrays.items():
        if value.flags.writeable or not value.flags.c_contiguous:
            value = np.array(value, order="C")
            value.flags.writeable = False
        kept[key] = value
    return kept


def same(held: Arrays, arrays: Arrays) -> bool:
    """Whether ``arrays`` has exactly the names, dtypes, shapes and bytes of ``held``."""
    if held.keys() != arrays.keys():
        return False
    for key in sorted(held):  # the first difference ends it: a new global differs everywhere
        a, b = held[key], np.ascontiguousarray(arrays[key])
        if a.dtype != b.dtype or a.shape != b.shape:
            return False
        unsigned = f"u{a.dtype.itemsize}"  # bytes, not values: -0.0 is not 0.0, NaN is NaN
        if not np.array_equal(a.reshape(-1).view(unsigned), b.reshape(-1).view(unsigned)):
            return False
    return True


def mergeable(model: PreTrainedModel) -> bool:
    """fp32 weights on one device, not quantized: a global adapter is merged into them."""
    devices = set(getattr(model, "hf_device_map", {}).values())
    spread = len(devices) > 1
    fp32 = next(model.parameters()).dtype == torch.float32
    return fp32 and not spread and not is_quantized(model)


@dataclass
class MergedWeights:
    """A cached model's weights beyond the loaded ones (module doc)."""

    conv1d: bool  # GPT-2-style transposed weights (client.model.loading.uses_conv1d)
    saved: dict[str, torch.Tensor] = field(default_factory=dict)  # module -> weight as loaded
    dirty: set[str] = field(default_factory=set)  # modules whose weight is not the loaded one
    # The global adapter the weights hold exactly (its modules W0 + B_g·A_g, every other module
    # W0), read-only (`frozen`); None otherwise.
    merged: dict[str, NDArray[np.floating]] | None = None
    hooks: list[RemovableHandle] = field(default_factory=list)

    def holds(self, arrays: Arrays) -> bool:
        """Whether the weights hold exactly ``arrays`` merged (and nothing else)."""
        return self.merged is not None and same(self.merged, arrays)

    def set_to(self, model: PreTrainedModel, arrays: Arrays) -> None:
        """``W = W0 + B_g·A_g`` for each module of ``arrays`` (one pass from the kept W0),
        ``W = W0`` for any other changed module."""
        self.merged = None
        found = _factors(model, arrays)
        self.restore(model, keep=set(found))
        with torch.no_grad():
            for name, (layer, a, b) in found.items():
                self.keep_loaded(name, layer)
                self.dirty.add(name)
                _add_product(_weight(layer), a, b, conv1d=self.conv1d, start=self.saved[name])
        self.merged = frozen(arrays)

    def add(self, model: PreTrainedModel, arrays: Arrays) -> None:
        """``W += B·A`` for each module of ``arrays``, on top of what the weights hold."""
        self.merged = None  # the weights now hold more than one global adapter
        with torch.no_grad():
            for name, (layer, a, b) in _factors(model, arrays).items():
                self.keep_loaded(name, layer)
                self.dirty.add(name)
                _add_product(_weight(layer), a, b, conv1d=self.conv1d)

    def keep_loaded(self, name: str, layer: torch.nn.Module) -> None:
        """Keep the module's loaded weight before the first merge touches it: the loaded
        tensor itself is kept, and the layer gets a copy to be merged into. (transformers maps
        a safetensors file's fp32 weights from the file: written into, each page would first be
        copied by the kernel, on top of the copy kept here; kept, they stay file-backed pages the
        kernel may drop and read again.)"""
        if name not in self.saved:
            if name in self.dirty:
                raise RuntimeError(f"`{name}` was changed before its loaded weight was kept")
            weight = _weight(layer)
            loaded = weight.data
            weight.data = loaded.clone()
            self.saved[name] = loaded

    def keep_all_loaded(self, model: PreTrainedModel, names: Iterable[str]) -> None:
        for name in names:
            self.keep_loaded(name, _layer(model, name))

    def restore(self, model: PreTrainedModel, *, keep: set[str] | None = None) -> None:
        """Copy the loaded weight back over every changed module not in ``keep``."""
        self.merged = None
        with torch.no_grad():
            for name in sorted(self.dirty - (keep or set())):
                _weight(_layer(model, name)).data.copy_(self.saved[name])
                self.dirty.discard(name)

    def hook(self, model: PreTrainedModel, arrays: Arrays) -> None:
        """The global adapter beside the weights: a frozen fp32 adapter per layer (module doc)."""
        pairs: dict[str, dict[str, NDArray[np.floating]]] = {}
        for key, value in arrays.items():
            pairs.setdefault(module_name(key), {})[key] = value
        for name, factors in sorted(pairs.items()):
            self.hooks.append(_add_hook(_layer(model, name), factors))

    def unhook(self) -> None:
        for handle in self.hooks:
            handle.remove()
        self.hooks.clear()


def _factors(
    model: PreTrainedModel, arrays: Arrays
) -> dict[str, tuple[torch.nn.Module, torch.Tensor, torch.Tensor]]:
    """Module name -> its layer and (A, B) as fp32 tensors on the layer's device, zero-padded to
    the widest module's rank as peft pads them (a module at that rank is taken as is). Every
    module is looked up before any weight changes: an unknown one leaves the weights as they
    were."""
    pairs: dict[str, dict[str, NDArray[np.floating]]] = {}
    for key, value in arrays.items():
        pairs.setdefault(module_name(key), {})[key] = value
    rank = max((int(v.shape[0]) for k, v in arrays.items() if k.endswith(A_SUFFIX)), default=0)
    found = {}
    for name, factors in sorted(pairs.items()):
        layer = _layer(model, name)
        device = _weight(layer).device
        a = float_tensor(_factor(factors, A_SUFFIX))  # (k, in)
        b = float_tensor(_factor(factors, B_SUFFIX))  # (out, k)
        if a.shape[0] != rank:
            a = torch.nn.functional.pad(a, (0, 0, 0, rank - a.shape[0]))
            b = torch.nn.functional.pad(b, (0, rank - b.shape[1]))
        found[name] = (layer, a.to(device), b.to(device))
    return found


def _layer(model: PreTrainedModel, name: str) -> torch.nn.Module:
    try:
        layer = model.get_submodule(name)
    except AttributeError:
        raise ValueError(f"global adapter module `{name}` is not in the base model: server "
                         "and node use different base models") from None  # fmt: skip
    if isinstance(layer, BaseTunerLayer):  # a kept LoRA's layer: the weight is its base's
        layer = layer.get_base_layer()
    return layer


def _add_product(
    weight: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    *,
    conv1d: bool,
    start: torch.Tensor | None = None,
) -> None:
    """``weight = start + B·A`` (``start`` defaults to ``weight``; ``(B·A)ᵀ`` for Conv1D): one
    fused multiply-add, bitwise peft's ``W += B @ A`` (scaling 1 is exact: left out)."""
    left, right = (a.T, b.T) if conv1d else (b, a)
    if start is None or start is weight:
        weight.addmm_(left, right)
    else:
        torch.addmm(start, left, right, out=weight)


def _factor(factors: Mapping[str, Any], suffix: str) -> Any:
    found = [v for k, v in factors.items() if k.endswith(suffix)]
    if len(found) != 1:
        raise ValueError(f"global adapter needs one `{suffix}` per module, got {len(found)}")
    return found[0]


def _weight(layer: torch.nn.Module) -> torch.Tensor:
    weight = layer.weight
    assert isinstance(weight, torch.Tensor)
    return weight


def _add_hook(layer: torch.nn.Module, factors: Arrays) -> RemovableHandle:
    """Add ``(x A_gᵀ) B_gᵀ`` in fp32 to the layer's output (an unmerged fp32 adapter)."""
    device = next(layer.parameters()).device
    a = float_tensor(_factor(factors, A_SUFFIX)).to(device)
    b = float_tensor(_factor(factors, B_SUFFIX)).to(device)

    def hook(_: torch.nn.Module, args: tuple[Any, ...], output: torch.Tensor) -> torch.Tensor:
        delta = (args[0].to(torch.float32) @ a.T) @ b.T  # (…, r) -> (…, out)
        result: torch.Tensor = (output.to(torch.float32) + delta).to(output.dtype)
        return result

    return layer.register_forward_hook(hook)

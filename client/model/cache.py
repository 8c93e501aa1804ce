"""The node's base model, kept loaded across messages, and the global adapter applied to it.

Loading the base model for every message costs more than the message's own work on a real model
(docs/performance.md). A process keeps one loaded base model, keyed by the model (its path and,
for a folder, its files' sizes and times), the device and the dtype. The cache only saves time:

- a message *checks out* the model: the entry leaves the cache while in use, so a concurrent
  message in the same process loads its own copy;
- the global adapter is applied by :func:`apply_global` and recorded on the entry: merged into
  fp32 weights exactly as peft merges it (the weights it touches are copied first), or kept beside
  them as a frozen fp32 adapter in low precision (see below);
- the node's LoRA is attached with :func:`attach_lora`: its layers stay attached between
  messages, switched off, and come back re-drawn as a fresh attach draws them
  (client/model/kept_lora.py);
- when the message ends, :func:`release` restores the base model — the kept LoRA switched off
  (any other peft layers and attributes removed), the global adapter's hooks removed, flags as
  after a fresh load — and returns it to the cache; if anything fails on the way the entry is
  dropped. The global adapter a checkout
  merged stays merged, recorded by its digest: the next checkout with the same adapter (the
  evaluate message of one round and the train message of the next carry the same) uses it as
  is, any other copies the loaded weights back first. Anything merged on top with
  :func:`apply_global` is copied back at release.

In bf16/fp16 the global update is not merged: ``B_g·A_g`` is far below the weights' rounding step
and merging would lose much of it. Each targeted layer instead gets a forward hook adding
``(x A_gᵀ) B_gᵀ`` in fp32 to its output — what peft computes for an unmerged fp32 adapter — beside
the node's trainable LoRA, whose factors stay fp32 (peft's ``autocast_adapter_dtype``). The same
holds for a quantized base model (node setting ``quantization``, client/model/quantization.py):
its 4-/8-bit weights are never merged into, whatever the compute dtype; and for a model spread
over several GPUs, where a merge's saved copies of the weights would not fit.
``FEDLORA_BASE_CACHE=0`` turns the cache off (a fresh load per message, as before).
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from peft import PeftModel
from peft.tuners.tuners_utils import BaseTunerLayer
from torch.utils.hooks import RemovableHandle
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from client.model import kept_lora, phases
from client.model import loading as _loading
from client.model.loading import (
    load_base,
    module_name,
    padded_state_dict,
    resolve_model_path,
    uses_conv1d,
)
from client.model.quantization import is_quantized
from strategies.math.factors import A_SUFFIX, B_SUFFIX

ENV_SWITCH = "FEDLORA_BASE_CACHE"


@dataclass(frozen=True)
class BaseKey:
    """What identifies a loaded base model: the model and its files, the device, the dtype."""

    model: str
    stamp: tuple[tuple[str, int, int], ...]  # (file, size, mtime_ns) of a model folder
    device: str
    dtype: str
    quantization: str = "none"
    spread: bool = False  # device `auto`: may be spread over several GPUs


@dataclass
class _Entry:
    key: BaseKey
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    saved: dict[str, torch.Tensor] = field(default_factory=dict)  # module -> weight before merge
    hooks: list[RemovableHandle] = field(default_factory=list)
    # What the weights hold beyond the loaded ones: None (nothing), the digest of the global
    # adapter `checkout` merged (kept across messages while it stays the same), or _DIRTY.
    merged: str | None = None
    # The node's LoRA kept attached (client/model/kept_lora.py) and what it was built for;
    # `lora_busy` while a message uses it.
    lora: PeftModel | None = None
    lora_key: kept_lora.LoraKey | None = None
    lora_busy: bool = False


_DIRTY = "dirty"  # merged by `apply_global` on top: copied back at release


_lock = threading.Lock()
_idle: dict[BaseKey, _Entry] = {}
_local = threading.local()


def enabled() -> bool:
    return os.environ.get(ENV_SWITCH, "1") != "0"


def base_key(
    base_model: str,
    *,
    device: torch.device,
    dtype: torch.dtype,
    quantization: str = "none",
    spread: bool = False,
) -> BaseKey:
    path = resolve_model_path(base_model)
    folder = Path(path)
    stamp: tuple[tuple[str, int, int], ...] = ()
    if folder.is_dir():
        stats = ((f.name, f.stat()) for f in sorted(folder.iterdir()) if f.is_file())
        stamp = tuple((name, st.st_size, st.st_mtime_ns) for name, st in stats)
    dtype_name = str(dtype).removeprefix("torch.")
    return BaseKey(path, stamp, str(device), dtype_name, quantization, spread)


def _leases() -> list[_Entry]:
    if not hasattr(_local, "leases"):
        _local.leases = []
    leases: list[_Entry] = _local.leases
    return leases


def checkout(
    base_model: str,
    *,
    device: torch.device,
    dtype: torch.dtype,
    gradient_checkpointing: bool,
    quantization: str = "none",
    spread: bool = False,
    global_adapter: Mapping[str, NDArray[np.floating]] | None = None,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The base model for this message: the cached one if its key matches, else a fresh load
    (``quantization`` and ``spread``: see ``client.model.loading.load_base``), with
    ``global_adapter`` applied as :func:`apply_global` applies it.

    A global adapter merged into fp32 weights stays merged in the cache after the message; the
    next checkout with the same adapter (same names, shapes and bytes: the evaluate message of
    round r and the train message of round r+1 carry the same one) skips the merge, any other
    checkout copies the loaded weights back first. The weights are bitwise those of a fresh
    merge either way.

    Call :func:`release` when the message ends (the ClientApp does, whatever happens).
    """
    key = base_key(base_model, device=device, dtype=dtype, quantization=quantization,
                   spread=spread)  # fmt: skip
    with _lock:
        entry = _idle.pop(key, None) if enabled() else None
    if entry is None:
        with phases.phase("load"):
            model, tokenizer = load_base(base_model, device=device, dtype=dtype,
                                         quantization=quantization, spread=spread)  # fmt: skip
        entry = _Entry(key, model, tokenizer)
    wanted = digest(global_adapter) if global_adapter else None
    if entry.merged is not None and entry.merged != wanted:
        _unmerge(entry)
    if gradient_checkpointing:
        _set_checkpointing(entry.model, enabled=True)
    _leases().append(entry)
    if global_adapter and entry.merged != wanted:
        with phases.phase("apply"):
            entry.merged = _DIRTY  # until the merge is complete
            merged = _apply_global(entry, entry.model, global_adapter)
            entry.merged = wanted if merged else None
    return entry.model, entry.tokenizer


def digest(arrays: Mapping[str, NDArray[np.floating]]) -> str:
    """SHA-256 over the names, dtypes, shapes and bytes of ``arrays`` (in name order)."""
    hasher = hashlib.sha256()
    for key in sorted(arrays):
        value = np.ascontiguousarray(arrays[key])
        hasher.update(f"{key}|{value.dtype.str}|{value.shape}|".encode())
        hasher.update(value.data)
    return hasher.hexdigest()


def _entry_of(model: torch.nn.Module) -> _Entry:
    for entry in _leases():
        if entry.model is model:
            return entry
    raise ValueError("the base model was not checked out with `checkout` in this thread")


def apply_global(model: PreTrainedModel, arrays: Mapping[str, NDArray[np.floating]]) -> None:
    """Apply the global adapter ``(B_g, A_g)`` (scaling 1): merged into fp32 weights, else
    a frozen fp32 adapter beside the weights (module doc)."""
    with phases.phase("apply"):
        entry = _entry_of(model)
        if _apply_global(entry, model, arrays) or entry.merged is not None:
            entry.merged = _DIRTY


def _apply_global(
    entry: _Entry, model: PreTrainedModel, arrays: Mapping[str, NDArray[np.floating]]
) -> bool:
    """Apply ``arrays``; True if they were merged into the weights, False if hooked beside."""
    pairs: dict[str, dict[str, NDArray[np.floating]]] = {}
    for key, value in arrays.items():
        pairs.setdefault(module_name(key), {})[key] = value
    exact = next(model.parameters()).dtype == torch.float32 and not _beside(model)
    rank = max((int(v.shape[0]) for k, v in arrays.items() if k.endswith(A_SUFFIX)), default=0)
    conv1d = uses_conv1d(model)
    for name, factors in sorted(pairs.items()):
        try:
            layer = model.get_submodule(name)
        except AttributeError:
            raise ValueError(f"global adapter module `{name}` is not in the base model: server "
                             "and node use different base models") from None  # fmt: skip
        if isinstance(layer, BaseTunerLayer):  # a kept LoRA's layer: the weight is its base's
            layer = layer.get_base_layer()
        if exact:
            _merge(entry, name, layer, padded_state_dict(factors, rank), conv1d=conv1d)
        else:
            entry.hooks.append(_add_hook(layer, factors))
    return exact and bool(pairs)


def attach_lora(
    model: PreTrainedModel,
    *,
    rank: int,
    alpha: float,
    target_modules: str,
    seed: int,
    keep: bool = True,
) -> PeftModel:
    """The node's fresh LoRA (``client.model.loading.attach_lora``) on a checked-out model.

    With ``keep`` the LoRA layers stay attached in the cache after the message and the next
    message with the same config gets them back re-drawn in place (client/model/kept_lora.py):
    A, B and the RNG state bitwise those of a fresh attach. ``keep=False`` (dp-sgd) attaches
    freshly built layers and drops them at release. A model not checked out gets a fresh attach.
    """
    key = kept_lora.LoraKey(rank, float(alpha), target_modules, uses_conv1d(model))
    entry = next((e for e in _leases() if e.model is model), None)
    if entry is None or entry.lora_busy:
        return _loading.attach_lora(model, rank=rank, alpha=alpha,
                                    target_modules=target_modules, seed=seed)  # fmt: skip
    entry.lora_busy = True
    if keep and entry.lora is not None and entry.lora_key == key:
        return kept_lora.reuse(entry.lora, seed=seed)
    if entry.lora is not None:  # built for another config, or a fresh one is wanted
        entry.lora, entry.lora_key = None, None
        kept_lora.unwrap(model)
    peft_model = _loading.attach_lora(model, rank=rank, alpha=alpha,
                                      target_modules=target_modules, seed=seed)  # fmt: skip
    if keep and enabled() and not is_quantized(model):
        entry.lora, entry.lora_key = peft_model, key
    return peft_model


def _beside(model: PreTrainedModel) -> bool:
    """Keep the global adapter beside the weights even in fp32: quantized weights are never
    merged into, and a model spread over GPUs has no room for the copies a merge keeps."""
    devices = set(getattr(model, "hf_device_map", {}).values())
    return is_quantized(model) or len(devices) > 1


def _factor(factors: Mapping[str, Any], suffix: str) -> Any:
    found = [v for k, v in factors.items() if k.endswith(suffix)]
    if len(found) != 1:
        raise ValueError(f"global adapter needs one `{suffix}` per module, got {len(found)}")
    return found[0]


def _merge(
    entry: _Entry,
    name: str,
    layer: torch.nn.Module,
    padded: Mapping[str, torch.Tensor],
    *,
    conv1d: bool,
) -> None:
    """``W += B_g @ A_g`` with the rank-padded factors: peft's ``merge_and_unload``, bit for bit."""
    weight = _weight(layer)
    if name not in entry.saved:
        entry.saved[name] = weight.detach().clone()
    a = _factor(padded, A_SUFFIX).to(weight.device)  # (R, in)
    b = _factor(padded, B_SUFFIX).to(weight.device)  # (out, R)
    delta = b @ a  # (out, in); peft then scales by 1.0, which is exact: left out
    with torch.no_grad():
        weight.data += delta.T if conv1d else delta


def _weight(layer: torch.nn.Module) -> torch.Tensor:
    weight = layer.weight
    assert isinstance(weight, torch.Tensor)
    return weight


def _add_hook(
    layer: torch.nn.Module, factors: Mapping[str, NDArray[np.floating]]
) -> RemovableHandle:
    """Add ``(x A_gᵀ) B_gᵀ`` in fp32 to the layer's output (an unmerged fp32 adapter)."""
    device = next(layer.parameters()).device
    a = torch.as_tensor(np.asarray(_factor(factors, A_SUFFIX), np.float32), device=device)
    b = torch.as_tensor(np.asarray(_factor(factors, B_SUFFIX), np.float32), device=device)

    def hook(_: torch.nn.Module, args: tuple[Any, ...], output: torch.Tensor) -> torch.Tensor:
        delta = (args[0].to(torch.float32) @ a.T) @ b.T  # (…, r) -> (…, out)
        result: torch.Tensor = (output.to(torch.float32) + delta).to(output.dtype)
        return result

    return layer.register_forward_hook(hook)


def _set_checkpointing(model: PreTrainedModel, *, enabled: bool) -> None:
    """Activation (gradient) checkpointing on or off; transformers 5 renamed the methods."""
    if enabled:
        kwargs = {"use_reentrant": False}
        if hasattr(model, "activation_checkpointing_enable"):
            model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)  # type: ignore[no-untyped-call]
    elif hasattr(model, "activation_checkpointing_disable"):
        model.activation_checkpointing_disable()  # type: ignore[no-untyped-call]
    else:
        model.gradient_checkpointing_disable()  # type: ignore[no-untyped-call]


def release() -> None:
    """Restore every base model this thread checked out and return it to the cache."""
    leases = _leases()
    while leases:
        entry = leases.pop()
        try:
            _restore(entry)
        except Exception:  # a model we cannot vouch for is dropped, never reused
            continue
        if enabled():
            with _lock:
                _idle.clear()  # one base model per process: the newest
                _idle[entry.key] = entry


def _unmerge(entry: _Entry) -> None:
    """Copy the loaded weights back over every merged one (the copies stay for the next merge)."""
    entry.merged = _DIRTY  # until every weight is back
    with torch.no_grad():
        for name, weight in entry.saved.items():
            _weight(entry.model.get_submodule(name)).data.copy_(weight)
    entry.merged = None


def _restore(entry: _Entry) -> None:
    model = entry.model
    for handle in entry.hooks:
        handle.remove()
    entry.hooks.clear()
    entry.lora_busy = False
    if (
        entry.lora is None
        or entry.lora_key is None
        or not kept_lora.park(entry.lora, entry.lora_key)
    ):
        entry.lora, entry.lora_key = None, None
        kept_lora.unwrap(model)
    if entry.merged == _DIRTY:
        _unmerge(entry)
    if model.supports_gradient_checkpointing:
        _set_checkpointing(model, enabled=False)
    if getattr(model, "_require_grads_hooks", None) or hasattr(model, "_require_grads_hook"):
        model.disable_input_require_grads()  # type: ignore[no-untyped-call]  # peft's hook
    model.requires_grad_(not is_quantized(model))  # as loaded (a quantized one: as prepared)
    model.zero_grad(set_to_none=True)
    model.train(False)
    kept = entry.lora is not None
    if any(isinstance(m, BaseTunerLayer) for m in model.modules()) and not kept:
        raise RuntimeError("peft layers left in the cached base model")

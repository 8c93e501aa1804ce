"""The node's base model, kept loaded across messages, and the global adapter applied to it.

Loading the base model for every message costs more than the message's own work on a real model
(docs/performance.md). A process keeps one loaded base model, keyed by the model (its path and,
for a folder, its files' sizes and times), the device and the dtype. The cache only saves time:

- a message *checks out* the model: the entry leaves the cache while in use, so a concurrent
  message in the same process loads its own copy;
- the global adapter is applied by :func:`checkout` (and on top by :func:`apply_global`): merged
  into fp32 weights, else kept beside them as a frozen fp32 adapter (client/model/merged.py).
  Merged weights are not copied back when a message ends; the next checkout writes each weight
  it needs once, and nothing when its global adapter is the one the weights hold (the evaluate
  message of one round and the train message of the next carry the same). The weights are
  bitwise those of a fresh load with the adapter merged either way;
- the node's LoRA is attached with :func:`attach_lora`: its layers stay attached between
  messages, switched off, and come back re-drawn as a fresh attach draws them
  (client/model/kept_lora.py); :func:`warm` builds them, and the copies of the loaded weights a
  merge needs, with the load;
- when the message ends, :func:`release` returns the base model to the cache — the kept LoRA
  switched off (any other peft layers and attributes removed), the global adapter's hooks
  removed, flags as after a fresh load; if anything fails on the way the entry is dropped.

``FEDLORA_BASE_CACHE=0`` turns the cache off (a fresh load per message, as before).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from numpy.typing import NDArray
from peft import PeftModel
from peft.tuners.tuners_utils import BaseTunerLayer
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from client.model import kept_lora, phases
from client.model import loading as _loading
from client.model.loading import load_base, resolve_model_path, uses_conv1d
from client.model.merged import MergedWeights, mergeable
from client.model.quantization import is_quantized

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
    weights: MergedWeights  # what the weights hold beyond the loaded ones
    checkpointing: bool = False
    # The node's LoRA kept attached (client/model/kept_lora.py) and what it was built for;
    # `lora_busy` while a message uses it.
    lora: PeftModel | None = None
    lora_key: kept_lora.LoraKey | None = None
    lora_busy: bool = False
    loaded_now: bool = False  # loaded by the message that holds it (see `warm`)


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
    merge_only: bool = False,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The base model for this message: the cached one if its key matches, else a fresh load
    (``quantization`` and ``spread``: see ``client.model.loading.load_base``), with
    ``global_adapter`` applied: merged into fp32 weights (:func:`holds_merged` then says so),
    else beside the weights as :func:`apply_global` applies it — or, with ``merge_only``, not at
    all (the caller applies what it needs).

    A merged global adapter stays merged in the cache after the message; the next checkout with
    the same adapter (same names, shapes and bytes) writes nothing, any other writes each
    changed weight once from the loaded one (module doc). The weights are bitwise those of a
    fresh load and merge either way.

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
        entry = _Entry(key, model, tokenizer, MergedWeights(uses_conv1d(model)), loaded_now=True)
    if gradient_checkpointing:
        _set_checkpointing(entry.model, enabled=True)
        entry.checkpointing = True
    _leases().append(entry)
    weights = entry.weights
    with phases.phase("apply"):
        if global_adapter and weights.holds(global_adapter):
            return entry.model, entry.tokenizer  # the weights hold it already
        if global_adapter and mergeable(entry.model):
            weights.set_to(entry.model, global_adapter)
        else:
            weights.restore(entry.model)
            if global_adapter and not merge_only:
                weights.hook(entry.model, global_adapter)
    return entry.model, entry.tokenizer


def warm(model: PreTrainedModel, *, rank: int, alpha: float, target_modules: str) -> None:
    """On a model its message has just loaded, build now what the node's first train message
    would build: the kept LoRA layers (switched off until then) and, on weights a global adapter
    is merged into, a copy of the loaded weight of each of their modules. Both are one-time
    costs of a cached model, like reading it, and are counted with it (phase ``load``); results
    are unchanged (the layers are re-drawn as a fresh attach draws them; the RNG is left as it
    was). Nothing happens on a model already cached, with the cache off, or where the layers
    are not kept (a quantized model)."""
    entry = _entry_of(model)
    if not entry.loaded_now or entry.lora is not None or entry.lora_busy or not enabled():
        return
    if is_quantized(model):
        return
    with phases.phase("load"):
        rng = torch.random.get_rng_state()
        try:
            attach_lora(model, rank=rank, alpha=alpha, target_modules=target_modules, seed=0)
            entry.lora_busy = False
            if entry.lora is None or entry.lora_key is None:
                raise RuntimeError("the node's LoRA was not kept")
            if not kept_lora.park(entry.lora, entry.lora_key):
                raise RuntimeError("the node's LoRA could not be switched off")
        except Exception:  # only a head start: the train message builds (and reports) it
            entry.lora, entry.lora_key, entry.lora_busy = None, None, False
            kept_lora.unwrap(model)
            return
        finally:
            torch.random.set_rng_state(rng)
        if mergeable(model):
            names = (n for n, m in model.named_modules() if isinstance(m, BaseTunerLayer))
            entry.weights.keep_all_loaded(model, names)


def holds_merged(model: PreTrainedModel) -> bool:
    """Whether the global adapter ``model`` was checked out with is merged into its weights
    (and nothing else since): ``W = W0 + B_g·A_g`` on its modules."""
    return _entry_of(model).weights.merged is not None


def _entry_of(model: torch.nn.Module) -> _Entry:
    for entry in _leases():
        if entry.model is model:
            return entry
    raise ValueError("the base model was not checked out with `checkout` in this thread")


def apply_global(model: PreTrainedModel, arrays: Mapping[str, NDArray[np.floating]]) -> None:
    """Apply ``(B_g, A_g)`` (scaling 1) on top of what ``model`` holds: added into fp32 weights
    (``W += B_g·A_g``, as peft merges), else a frozen fp32 adapter beside the weights
    (client/model/merged.py)."""
    with phases.phase("apply"):
        entry = _entry_of(model)
        if not arrays:
            return
        if mergeable(model):
            entry.weights.add(model, arrays)
        else:
            entry.weights.hook(model, arrays)


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
    entry = next((e for e in _leases() if e.model is model), None)
    conv1d = entry.weights.conv1d if entry is not None else uses_conv1d(model)
    key = kept_lora.LoraKey(rank, float(alpha), target_modules, conv1d)
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


def _restore(entry: _Entry) -> None:
    model = entry.model
    entry.loaded_now = False
    entry.weights.unhook()
    entry.lora_busy = False
    if (
        entry.lora is None
        or entry.lora_key is None
        or not kept_lora.park(entry.lora, entry.lora_key)
    ):
        entry.lora, entry.lora_key = None, None
        kept_lora.unwrap(model)
    # merged weights stay as they are: the next checkout writes what it needs
    if entry.checkpointing and model.supports_gradient_checkpointing:
        _set_checkpointing(model, enabled=False)
    entry.checkpointing = False
    if getattr(model, "_require_grads_hooks", None) or hasattr(model, "_require_grads_hook"):
        model.disable_input_require_grads()  # type: ignore[no-untyped-call]  # peft's hook
    trainable = not is_quantized(model)  # as loaded (a quantized one: as prepared)
    for param in model.parameters():  # one walk: requires_grad_ and zero_grad(set_to_none)
        param.requires_grad_(trainable)
        param.grad = None
    if model.training or any(m.training for m in model.children()):
        model.train(False)
    kept = entry.lora is not None
    if not kept and any(isinstance(m, BaseTunerLayer) for m in model.modules()):
        raise RuntimeError("peft layers left in the cached base model")

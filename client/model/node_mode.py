"""What a node does with the global adapter, as the strategy's train instruction says.

``merge`` (flora, ffa): W = W0 + B_g·A_g, then a fresh LoRA of the node's rank (B zero).
``continue`` (fedit, zeropad, flexlora): W0 untouched; the LoRA starts at the first r_i
components of the global adapter, A = A_g[:k], B = B_g[:, :k] / s_i (k = min(r_i, r_g); the
global has scaling 1, so s_i·B·A = B_g[:, :k]·A_g[:k]); components beyond k start fresh.
``continue-merged`` (flora): as ``continue``, and the global's components beyond k are merged
into W, so the node starts at the global model exactly; the server stacks its change
(strategies/math/flora.py ``stack_changes``). On fp32 weights the whole global adapter is merged
and the first k components taken back out, W = W0 + B_g·A_g - B_g[:, :k]·A_g[:k]: the cache
usually holds W0 + B_g·A_g already from the round's evaluate message (client/model/cache.py), so
this costs one rank-k pass instead of restoring W0 and merging the rest.
``shared-a-seed``: a fresh A starts at the public seeded A (strategies/math/public_a.py), the
same at every node and nested across ranks — also what DP-LoRA publishes. ``freeze-a``:
only B trains. The node needs no setting of its own for any of this.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
from numpy.typing import NDArray
from peft import PeftModel
from transformers import PreTrainedModel

from client.model import cache as base_cache
from client.model.loading import float_tensor
from client.privacy.dp_sgd import freeze_lora_a
from common.config import Config, SettingsError
from strategies import protocol as p
from strategies.math.factors import A_SUFFIX, B_SUFFIX
from strategies.math.public_a import public_lora_a

ADAPTER_NAME = "default"  # peft's name for the one adapter a node trains


@dataclass(frozen=True)
class NodeMode:
    """The node-side behaviour a strategy asked for."""

    mode: str = p.MERGE
    shared_a_seed: int | None = None
    freeze_a: bool = False

    @property
    def merges(self) -> bool:
        """The whole global adapter is merged into W before a fresh LoRA is attached."""
        return self.mode == p.MERGE

    @classmethod
    def from_config(cls, config: Config) -> NodeMode:
        """Read `node-mode`, `shared-a-seed`, `freeze-a` from an instruction (all optional)."""
        problems = []
        mode = config.get(p.NODE_MODE, p.MERGE)
        if mode not in p.NODE_MODES:
            problems.append(f"`{p.NODE_MODE}` is {mode!r}: use one of {', '.join(p.NODE_MODES)} "
                            "(the server runs a newer fedlora: update the node)")  # fmt: skip
        seed = config.get(p.SHARED_A_SEED)
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            problems.append(f"`{p.SHARED_A_SEED}` is {seed!r}: the server must send an integer")
        freeze = config.get(p.FREEZE_A, False)
        if not isinstance(freeze, bool):
            problems.append(f"`{p.FREEZE_A}` is {freeze!r}: the server must send true or false")
        if problems:
            raise SettingsError(problems)
        return cls(str(mode), seed, bool(freeze))


def set_public_a(model: PeftModel, *, seed: int) -> int:
    """Set every ``lora_A`` to the public seeded A of its module; returns how many were set."""
    count = 0
    with torch.no_grad():
        for name, param in model.named_parameters():
            if ".lora_A." in name:
                module = name.split(".lora_A.")[0]
                rank, in_features = param.shape
                a = public_lora_a(module, rank=rank, in_features=in_features, seed=seed)
                param.copy_(torch.as_tensor(a, dtype=param.dtype, device=param.device))
                count += 1
    return count


def load_global_components(
    model: PeftModel, arrays: Mapping[str, NDArray[np.floating]], *, scaling: float
) -> None:
    """Continue: copy the first k global components into the node's LoRA (see module doc)."""
    params = dict(model.named_parameters())
    with torch.no_grad():
        for key, value in arrays.items():
            suffix = A_SUFFIX if key.endswith(A_SUFFIX) else B_SUFFIX
            name = key.removesuffix(suffix) + suffix.replace(".weight", f".{ADAPTER_NAME}.weight")
            param = params.get(name)
            if param is None:
                raise ValueError(f"global adapter key `{key}` matches no LoRA module of this "
                                 "node: server and node use different base models")  # fmt: skip
            k = min(param.shape[0] if suffix == A_SUFFIX else param.shape[1], _rank(value, suffix))
            if suffix == A_SUFFIX:
                param[:k] = float_tensor(value[:k]).to(param.dtype)  # (k, in)
            else:
                param[:, :k] = torch.as_tensor(
                    value[:, :k] / scaling, dtype=param.dtype
                )  # (out, k)


def global_head(
    arrays: Mapping[str, NDArray[np.floating]], *, rank: int
) -> dict[str, NDArray[np.floating]]:
    """The global adapter's first ``rank`` components, negated (B): added to W0 + B_g·A_g they
    leave the components beyond ``rank``."""
    return {
        key: value[:rank] if key.endswith(A_SUFFIX) else -value[:, :rank]  # (k, in), (out, k)
        for key, value in arrays.items()
    }


def global_rest(
    arrays: Mapping[str, NDArray[np.floating]], *, rank: int
) -> dict[str, NDArray[np.floating]]:
    """The global adapter's components beyond the first ``rank`` (empty if there are none)."""
    rest = {}
    for key, value in arrays.items():
        part = value[rank:] if key.endswith(A_SUFFIX) else value[:, rank:]  # (g-k, in), (out, g-k)
        if part.size:
            rest[key] = part
    return rest


def _rank(value: NDArray[np.floating], suffix: str) -> int:
    return int(value.shape[0] if suffix == A_SUFFIX else value.shape[1])


def start_lora(
    model: PreTrainedModel,
    global_arrays: Mapping[str, NDArray[np.floating]],
    *,
    mode: NodeMode,
    rank: int,
    alpha: float,
    target_modules: str,
    seed: int,
    public_a_seed: int | None,
    keep_layers: bool = True,
) -> PeftModel:
    """The LoRA this node trains this round (``model`` has the global merged in merge mode).

    ``public_a_seed``: the instruction's `shared-a-seed`, or DP-LoRA's public seed, or None
    (A from the node's own ``seed``). In ``continue-merged`` mode ``model`` must come from the
    base-model cache (client/model/cache.py), checked out with ``global_arrays`` and
    ``merge_only``: merged there, the node's first components are taken back out; otherwise
    (low precision) the rest of the global is applied beside the weights. On a cached model the
    LoRA layers are kept between messages and re-drawn as a fresh attach draws them
    (client/model/kept_lora.py); ``keep_layers=False`` attaches freshly built ones (dp-sgd:
    opacus wraps new layers).
    """
    if mode.mode == p.CONTINUE_MERGED and global_arrays:
        if base_cache.holds_merged(model):  # W0 + B_g·A_g: the node's first components back out
            base_cache.apply_global(model, global_head(global_arrays, rank=rank))
        elif rest := global_rest(global_arrays, rank=rank):
            base_cache.apply_global(model, rest)
    peft_model = base_cache.attach_lora(
        model,
        rank=rank,
        alpha=alpha,
        target_modules=target_modules,
        seed=seed,
        keep=keep_layers,
    )
    if public_a_seed is not None:
        set_public_a(peft_model, seed=public_a_seed)
    if not mode.merges and global_arrays:
        load_global_components(peft_model, global_arrays, scaling=alpha / rank)
    if mode.freeze_a:
        freeze_lora_a(peft_model)
    return peft_model

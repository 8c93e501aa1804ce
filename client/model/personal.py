"""Personalization: a private LoRA next to the shared one, kept on the node and never sent.

FedDPA (Yang et al., "Dual-Personalizing Adapter for Federated Foundation Models", NeurIPS 2024)
and pFedLoRA keep a *global* adapter, shared through the server, and a *local* adapter that
stays on the client. Here the shared part is the LoRA the strategy asks for (client/model/
node_mode.py) and the private part is a second peft adapter, ``personal``, of the node's own
rank; both are active and trained together every round, so the shared LoRA learns what the
private one does not explain. Only the shared factors are in the reply
(``get_peft_model_state_dict`` of the ``default`` adapter); the private one is written to the
node's state folder (``state-dir``, the privacy ledger's folder) as safetensors after every round
and loaded from there the next round, also after a restart. Any rank works: the private LoRA
never meets another node's.

Evaluation uses the personalized model (global adapter + private LoRA) once a private LoRA
exists. Privacy: under dp-sgd every trained parameter, private ones included, is trained by
opacus; under dp-lora the released change of the shared B is clipped and noised whatever the
private part did (the Gaussian mechanism holds for any function of the data). The private LoRA
is trained on the node's data and never leaves it.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel
from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from common.config import Config, SettingsError
from common.files import write_atomic

PERSONAL = "personal"  # the private adapter's peft name
PERSONAL_FILE = "personal-lora.safetensors"
PERSONAL_KEY = "personal"  # node config: `none` or `private-lora`
PERSONAL_MODES = ("none", "private-lora")


def personal_mode(node_config: Config) -> str:
    """The node's `personal` setting (node config; default ``none``)."""
    mode = node_config.get(PERSONAL_KEY, "none")
    if mode not in PERSONAL_MODES:
        raise SettingsError([f"`{PERSONAL_KEY}` is {mode!r}: use one of "
                             f"{', '.join(PERSONAL_MODES)}"])  # fmt: skip
    return str(mode)


def attach_personal(
    model: PeftModel, state_dir: Path, *, seed: int, freeze_a: bool = False
) -> bool:
    """Add the private LoRA beside ``model``'s ``default`` one, from ``state_dir`` if it holds
    one (else fresh: A seeded, B zero); make both active and trainable.

    Parameters
    ----------
    model
        The node's peft model with its shared ``default`` adapter.
    state_dir
        The node's state folder.
    seed
        Seed of a fresh private A.
    freeze_a
        Freeze every ``lora_A`` again (the strategy or DP-LoRA trains only B).

    Returns
    -------
    bool
        Whether the private LoRA was loaded from ``state_dir``.

    Raises
    ------
    ValueError
        If the saved private LoRA does not fit this model (rank or base model changed).
    """
    config = copy.deepcopy(model.peft_config["default"])
    torch.manual_seed(seed)
    model.add_adapter(PERSONAL, config)
    path = state_dir / PERSONAL_FILE
    loaded = path.is_file()
    if loaded:
        state = load_safetensors(path.read_bytes())
        try:
            result: Any = set_peft_model_state_dict(model, state, adapter_name=PERSONAL)
        except RuntimeError as err:  # a shape mismatch
            raise ValueError(_mismatch(path, str(err).splitlines()[0])) from None
        missing = [k for k in result.missing_keys if f".{PERSONAL}." in k]
        if result.unexpected_keys or missing:
            raise ValueError(_mismatch(path, f"keys {(result.unexpected_keys or missing)[:2]}"))
    base: Any = model.base_model  # peft's LoraModel (typed loosely by peft)
    base.set_adapter(["default", PERSONAL])
    if freeze_a:
        for name, param in model.named_parameters():
            if ".lora_A." in name:
                param.requires_grad_(False)
    return loaded


def _mismatch(path: Path, detail: str) -> str:
    return (f"the private LoRA in {path} does not fit this node's model ({detail}): the node's "
            "`lora-rank` or base model changed; restore them or move the file away to start a "
            "new private LoRA")  # fmt: skip


def save_personal(model: PeftModel, state_dir: Path) -> Path:
    """Write the private LoRA to ``state_dir`` atomically (safetensors, never pickle)."""
    state = get_peft_model_state_dict(model, adapter_name=PERSONAL)
    tensors = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in state.items()}
    state_dir.mkdir(parents=True, exist_ok=True)
    path = state_dir / PERSONAL_FILE
    write_atomic(path, save_safetensors(tensors))
    return path


def has_personal(state_dir: Path) -> bool:
    return (state_dir / PERSONAL_FILE).is_file()

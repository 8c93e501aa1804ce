"""The LoRA modules every train reply must carry, announced by the server from the base model.

The server builds the base model on PyTorch's ``meta`` device (shapes only, no weights, no
memory), attaches a rank-1 LoRA exactly as nodes do (same ``target-modules``), and reads the
peft key names and shapes. A reply with any other module set is refused from round 1 on, so no
majority vote among nodes decides what the global adapter is made of.
"""

from __future__ import annotations

import importlib
import os
import time

from strategies.math.factors import A_SUFFIX, B_SUFFIX
from strategies.math.validation import Shapes

IMPORT_ATTEMPTS = 50


def import_model_stack() -> None:
    """Import peft, transformers and torch, retrying while another thread imports them.

    Under Flower's simulation engine the ServerApp runs in a thread while the main thread loads
    the ClientApp (which imports the same stack). Python's import-deadlock avoidance can then
    hand one thread a partly initialised ``transformers`` (``cannot import name 'AutoModel'``);
    the failed import is rolled back, so trying again once the other thread is done succeeds.
    """
    for attempt in range(IMPORT_ATTEMPTS):
        try:
            importlib.import_module("peft")
            importlib.import_module("client.model.loading")
            return
        except ImportError:
            if attempt == IMPORT_ATTEMPTS - 1:
                raise
            time.sleep(0.2)


def check_base_model(base_model: str) -> str:
    """The model's folder or hub id, after checking it loads; one-line error otherwise.

    Raises
    ------
    ValueError
        ``base-model`` is neither a model folder nor a reachable hub id.
    """
    import_model_stack()
    from transformers import AutoConfig

    from client.model.loading import resolve_model_path

    path = resolve_model_path(base_model)
    offline = os.environ.get("HF_HUB_OFFLINE") == "1"
    try:
        AutoConfig.from_pretrained(path, local_files_only=offline)
    except (OSError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        where = "the Hugging Face cache (HF_HUB_OFFLINE=1)" if offline else "the hub"
        raise ValueError(
            f"`base-model` is {base_model!r}: neither a model folder (with config.json) nor a "
            f"hub id found in {where} ({first[:160]}); give a folder that "
            "`AutoModelForCausalLM.from_pretrained` loads, a reachable hub id, or leave it "
            "empty for the embedded model"
        ) from None
    return path


def announced_modules(base_model: str, target_modules: str) -> Shapes:
    """module -> (out, in) of every LoRA module a node of this run trains."""
    import_model_stack()
    import torch
    from peft import get_peft_model_state_dict
    from transformers import AutoConfig, AutoModelForCausalLM

    from client.model.loading import attach_lora

    path = check_base_model(base_model)
    offline = os.environ.get("HF_HUB_OFFLINE") == "1"
    config = AutoConfig.from_pretrained(path, local_files_only=offline)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)  # type: ignore[no-untyped-call]
    peft_model = attach_lora(model, rank=1, alpha=1.0, target_modules=target_modules, seed=0)
    state = get_peft_model_state_dict(peft_model)
    shapes: dict[str, tuple[int, int]] = {}
    for key, tensor in state.items():
        if key.endswith(A_SUFFIX):  # (1, in)
            module = key.removesuffix(A_SUFFIX)
            shapes[module] = (shapes.get(module, (0, 0))[0], int(tensor.shape[1]))
        elif key.endswith(B_SUFFIX):  # (out, 1)
            module = key.removesuffix(B_SUFFIX)
            shapes[module] = (int(tensor.shape[0]), shapes.get(module, (0, 0))[1])
    return shapes

"""Base model loading, the global adapter, and the node's fresh LoRA (peft)."""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import numpy as np
import torch
from numpy.typing import NDArray
from peft import (
    LoraConfig,
    PeftModel,
    get_peft_model,
    get_peft_model_state_dict,
    set_peft_model_state_dict,
)
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)
from transformers.pytorch_utils import Conv1D
from transformers.utils import logging as hf_logging

from client.model import placement
from client.model.quantization import bnb_config, check_runtime, compute_dtype, prepare
from strategies.math.factors import A_SUFFIX, B_SUFFIX

hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]

EMBEDDED = "embedded"
_ASSET = Path("client") / "assets" / "base-model"
_WEIGHTS = "model.safetensors"
PEFT_PREFIX = "base_model.model."


def embedded_model_dir() -> Path:
    """Folder of the tiny byte-level Llama that ships with fedlora.

    Looked up next to this module first; when Flower runs the app from a FAB (which carries only
    source files, not weights), in the installed ``fedlora`` distribution instead.
    """
    here = Path(__file__).resolve().parents[1] / "assets" / "base-model"
    candidates = [here, *_installed_asset_dirs()]
    for candidate in candidates:
        if (candidate / _WEIGHTS).is_file():
            return candidate
    raise FileNotFoundError(
        "the embedded base model was not found (looked in "
        + ", ".join(str(c) for c in candidates)
        + "): install fedlora with `pip install -e .` from the repository, or set `base-model` "
        "in the run config to a model directory"
    )


def _installed_asset_dirs() -> list[Path]:
    try:
        dist = metadata.distribution("fedlora")
    except metadata.PackageNotFoundError:
        return []
    found = [
        Path(str(dist.locate_file(f))).parent
        for f in dist.files or []
        if str(f).endswith(f"base-model/{_WEIGHTS}")
    ]
    direct_url = dist.read_text("direct_url.json")  # PEP 610: editable installs name their source
    if direct_url:
        url = json.loads(direct_url).get("url", "")
        if url.startswith("file://"):
            found.append(Path(unquote(urlparse(url).path)) / _ASSET)
    return found


def resolve_model_path(base_model: str) -> str:
    """``""``/``"embedded"`` -> the embedded model's folder; anything else is passed on as is."""
    if base_model in ("", EMBEDDED):
        return str(embedded_model_dir())
    return base_model


def pick_device(setting: str) -> torch.device:
    """``auto`` -> CUDA when present, else CPU."""
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if setting.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"`device` is {setting!r} but CUDA is not available: use `auto` or `cpu`")
    return torch.device(setting)


def load_base(
    base_model: str,
    *,
    device: torch.device,
    dtype: torch.dtype = torch.float32,
    quantization: str = "none",
    spread: bool = False,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a causal LM (in ``dtype``) and its tokenizer with ``from_pretrained`` (local folder
    or hub id).

    ``quantization`` ``nf4``/``int8``: through bitsandbytes, prepared for QLoRA
    (client/model/quantization.py; refused where it cannot run). ``spread``: the node's device is
    ``auto``, so a model too large for one of several GPUs is spread over them
    (client/model/placement.py).
    """
    check_runtime(quantization, device)  # before anything is read
    path = resolve_model_path(base_model)
    offline = os.environ.get("HF_HUB_OFFLINE") == "1"
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=offline)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    kwargs: dict[str, Any] = {}
    quantized = bnb_config(quantization, compute_dtype=compute_dtype(quantization, dtype))
    if quantized is not None:
        kwargs["quantization_config"] = quantized
        index = device.index if device.index is not None else torch.cuda.current_device()
        kwargs["device_map"] = {"": index}  # bitsandbytes quantizes while placing on the GPU
    if spread and device.type == "cuda":
        where = placement.plan(path, dtype=dtype, quantization=quantization, offline=offline)
        if where.max_memory is not None:
            kwargs["device_map"], kwargs["max_memory"] = "auto", dict(where.max_memory)
    model = AutoModelForCausalLM.from_pretrained(
        path, dtype=compute_dtype(quantization, dtype), local_files_only=offline, **kwargs
    )
    if "device_map" not in kwargs:
        model.to(device)  # type: ignore[arg-type]  # before peft wrapping (opacus#820)
    if quantized is not None:
        model = prepare(model)
    model.config.use_cache = False
    return model, tokenizer


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def pick_dtype(setting: str, device: torch.device) -> torch.dtype:
    """``auto`` -> bf16 on a CUDA device that supports it, else fp32; or the named dtype."""
    if setting == "auto":
        cuda_bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
        return torch.bfloat16 if cuda_bf16 else torch.float32
    if setting not in DTYPES:
        raise ValueError(f"`dtype` is {setting!r}: use auto, {', '.join(DTYPES)}")
    return DTYPES[setting]


def module_name(peft_key: str) -> str:
    """``base_model.model.model.layers.0.q_proj.lora_A.weight`` -> ``model.layers.0.q_proj``."""
    name = peft_key.removeprefix(PEFT_PREFIX)
    for suffix in (A_SUFFIX, B_SUFFIX):
        name = name.removesuffix(suffix)
    return name


def uses_conv1d(model: torch.nn.Module) -> bool:
    """GPT-2-style models store weights transposed (``Conv1D``): peft needs ``fan_in_fan_out``."""
    return any(isinstance(m, Conv1D) for m in model.modules())


def global_adapter_config(
    arrays: Mapping[str, NDArray[np.floating]], *, fan_in_fan_out: bool = False
) -> LoraConfig | None:
    """A peft config for a global adapter (rank = widest module, scaling 1), or None if empty."""
    modules = sorted({module_name(k) for k in arrays})
    rank = max((int(v.shape[0]) for k, v in arrays.items() if k.endswith(A_SUFFIX)), default=0)
    if rank == 0:
        return None
    return LoraConfig(
        r=rank,
        lora_alpha=rank,
        fan_in_fan_out=fan_in_fan_out,
        target_modules=modules,
        lora_dropout=0.0,
        bias="none",
        task_type="CAUSAL_LM",
    )


def float_tensor(array: NDArray[np.floating]) -> torch.Tensor:
    """``array`` as an fp32 CPU tensor, sharing its memory where it is fp32 already — also a
    read-only view of a message's bytes (strategies.protocol.view_record), which is only read."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.as_tensor(np.asarray(array, dtype=np.float32))


def padded_state_dict(
    arrays: Mapping[str, NDArray[np.floating]], rank: int
) -> dict[str, torch.Tensor]:
    """Zero-pad every module's factors to ``rank`` (exact: padded rows/columns add nothing)."""
    state = {}
    for key, value in arrays.items():
        tensor = float_tensor(value)
        if key.endswith(A_SUFFIX):  # (k, in) -> (rank, in)
            tensor = torch.nn.functional.pad(tensor, (0, 0, 0, rank - tensor.shape[0]))
        else:  # (out, k) -> (out, rank)
            tensor = torch.nn.functional.pad(tensor, (0, rank - tensor.shape[1]))
        state[key] = tensor
    return state


def wrap_global_adapter(
    model: PreTrainedModel, arrays: Mapping[str, NDArray[np.floating]]
) -> PeftModel | None:
    """Attach the global adapter ``(B_g, A_g)`` to ``model`` as a peft LoRA with scaling 1."""
    config = global_adapter_config(arrays, fan_in_fan_out=uses_conv1d(model))
    if config is None:
        return None
    peft_model = _peft(model, config)
    result: Any = set_peft_model_state_dict(peft_model, padded_state_dict(arrays, config.r))
    if result.unexpected_keys:
        raise ValueError(
            f"global adapter keys do not match the base model: {result.unexpected_keys[:3]}"
        )
    return peft_model


def merge_global_adapter(
    model: PreTrainedModel, arrays: Mapping[str, NDArray[np.floating]]
) -> PreTrainedModel:
    """Return ``model`` with ``W = W0 + B_g @ A_g`` merged into its weights (Conv1D aware)."""
    peft_model = wrap_global_adapter(model, arrays)
    if peft_model is None:
        return model
    with torch.no_grad():
        merged: PreTrainedModel = peft_model.merge_and_unload()
    return merged


def attach_lora(
    model: PreTrainedModel, *, rank: int, alpha: float, target_modules: str, seed: int
) -> PeftModel:
    """A fresh LoRA of the node's own rank: A random (seeded), B zero."""
    targets: str | list[str] = target_modules
    if target_modules != "all-linear":
        targets = [t.strip() for t in target_modules.split(",") if t.strip()]
    config = LoraConfig(
        r=rank,
        lora_alpha=alpha,  # type: ignore[arg-type]  # peft annotates int; floats work
        fan_in_fan_out=uses_conv1d(model),
        target_modules=targets,
        lora_dropout=0.0,
        bias="none",
        task_type="CAUSAL_LM",
    )
    torch.manual_seed(seed)
    return _peft(model, config)


def _peft(model: PreTrainedModel, config: LoraConfig) -> PeftModel:
    with warnings.catch_warnings():  # peft probes a transformers property deprecated in v5
        warnings.filterwarnings(
            "ignore", message=".*is_gradient_checkpointing", category=FutureWarning
        )
        return get_peft_model(model, config)


def lora_factors(model: PeftModel) -> dict[str, NDArray[np.float32]]:
    """Only the LoRA factors, under peft's state-dict key names, as fp32 numpy."""
    state = get_peft_model_state_dict(model)
    factors = {}
    for key, tensor in state.items():
        if not (key.endswith(A_SUFFIX) or key.endswith(B_SUFFIX)):
            raise ValueError(
                f"unexpected trainable state `{key}`: only LoRA factors may leave the node"
            )
        factors[key] = tensor.detach().to(device="cpu", dtype=torch.float32).numpy().copy()
    return factors

"""Save the global adapter as an ordinary peft adapter (``PeftModel.from_pretrained`` loads it)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

ADAPTER_DIR = "adapter"


def export_adapter(
    arrays: Mapping[str, NDArray[np.floating]],
    *,
    base_model: str,
    out_dir: Path,
    provenance: Mapping[str, Any],
) -> Path | None:
    """Write ``adapter_config.json`` + ``adapter_model.safetensors`` (rank <= cap, scaling 1).

    Modules narrower than the widest are zero-padded, which leaves ``B @ A`` unchanged.
    Returns None when the global adapter is still empty.
    """
    import torch

    from client.model.loading import load_base, resolve_model_path, wrap_global_adapter

    model, _ = load_base(base_model, device=torch.device("cpu"))
    peft_model = wrap_global_adapter(model, arrays)
    if peft_model is None:
        return None
    peft_model.peft_config["default"].base_model_name_or_path = resolve_model_path(base_model)
    peft_model.save_pretrained(str(out_dir))
    (out_dir / "fedlora.json").write_text(json.dumps(dict(provenance), indent=2, sort_keys=True))
    return out_dir

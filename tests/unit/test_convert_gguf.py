"""scripts/convert_gguf.py: what it refuses before any work (the conversion itself needs the
`gguf` package, kept out of the venv; it was run by hand, docs/federation-value.md)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "convert_gguf.py"


def _script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("convert_gguf", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_convert_refuses_a_missing_file_and_a_used_folder(tmp_path: Path) -> None:
    script = _script()
    with pytest.raises(FileNotFoundError, match="`gguf_file`"):
        script.convert(tmp_path / "none.gguf", tmp_path / "out")
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "config.json").write_text("{}")
    with pytest.raises(FileExistsError, match="is not empty"):
        script.convert(gguf, tmp_path / "out")


def test_without_gguf_the_command_says_how_to_get_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    if importlib.util.find_spec("gguf") is not None:
        pytest.skip("gguf is installed here")
    with pytest.raises(SystemExit) as exit_info:
        _script().main([str(tmp_path / "m.gguf"), str(tmp_path / "out")])
    assert exit_info.value.code == 2
    assert "pip install --target DIR gguf" in capsys.readouterr().err

"""``fedlora compare --config KEY=VALUE``: a run-config key for every arm (e.g. to measure
what `max-norm-ratio` costs), checked like ``simulate``'s."""

from __future__ import annotations

from typing import Any

import pytest

from server.cli.main import build_parser


def test_config_pairs_reach_every_arm(monkeypatch: pytest.MonkeyPatch) -> None:
    import server.compare.run

    seen: dict[str, Any] = {}
    monkeypatch.setattr(server.compare.run, "compare", lambda **kwargs: seen.update(kwargs))
    args = build_parser().parse_args(["compare", "--quick", "--settings", "r8", "--base-model",
                                      "m", "--config", "max-norm-ratio=3"])  # fmt: skip
    assert args.func(args) == 0
    assert seen["extra"] == {"max-norm-ratio": 3, "base-model": "m"}
    assert [a.label for a in seen["arms"]] == ["flora [r8]", "local [r8]"]


def test_an_unknown_key_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["compare", "--config", "max-norm-ratoi=3"])
    assert "`--config` key 'max-norm-ratoi' is unknown" in capsys.readouterr().err

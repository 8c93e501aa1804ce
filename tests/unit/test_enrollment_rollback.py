"""An enrollment that fails after Flower registered the key rolls back on both sides: the
registry's transaction, and the key in Flower (unregistered again), so no key stays registered
that fedlora does not know, and the token can be used again."""

from __future__ import annotations

from pathlib import Path

import pytest

from server.operator.enrollment import registry as registry_module
from server.operator.enrollment.registry import Refused, Registry


def _enroll(registry: Registry, unregister: object = None) -> object:
    return registry.enroll(token_id="t1", secret="s", public_key="key-a", fingerprint="fp-a",
                           peer="test", register=lambda _n, _k: 42,
                           unregister=unregister)  # type: ignore[arg-type]  # fmt: skip


@pytest.fixture
def registry(tmp_path: Path) -> Registry:
    found = Registry(tmp_path / "enrollment.db")
    found.add_invitation(token_id="t1", name="hospital-a", secret="s", ttl_s=600)
    return found


def _broken_map(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*_: object, **__: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(registry_module, "write_enrolled_nodes", fail)


def test_a_failed_map_write_unregisters_the_key_and_keeps_the_token(
    registry: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    taken_back: list[int] = []
    _broken_map(monkeypatch)
    with pytest.raises(Refused, match=r"registration failed: disk full.*unregistered from Flower"):
        _enroll(registry, taken_back.append)
    assert taken_back == [42]
    assert registry.events()[-1][3] == "refused" and "node 42" in registry.events()[-1][4]
    monkeypatch.undo()  # the disk has room again: the same token enrolls the node
    record = _enroll(registry, taken_back.append)
    assert record.name == "hospital-a" and taken_back == [42]  # type: ignore[attr-defined]


def test_an_unregister_that_fails_too_names_the_node_to_remove(
    registry: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(node_id: int) -> None:
        raise RuntimeError("SuperLink unreachable")

    _broken_map(monkeypatch)
    with pytest.raises(Refused, match=r"Flower node 42 keeps the key.*SuperLink unreachable"):
        _enroll(registry, refuse)


def test_a_refused_token_registers_nothing_so_nothing_is_taken_back(registry: Registry) -> None:
    taken_back: list[int] = []
    with pytest.raises(Refused, match="unknown token"):
        registry.enroll(token_id="t1", secret="wrong", public_key="key-a", fingerprint="fp-a",
                        peer="test", register=lambda _n, _k: 42,
                        unregister=taken_back.append)  # fmt: skip
    assert taken_back == []

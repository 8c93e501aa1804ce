"""`fedlora simulate`'s torch threads: one per node process with the embedded model unless
`--threads` says otherwise (measured 3x faster on busy shared cores), torch's own choice with a
model of one's own; callers of ``simulate()`` (``compare``'s workers) keep what they set."""

from __future__ import annotations

from typing import Any

import pytest

from server.cli.main import build_parser, main
from server.simulation import simulate as simulate_module
from server.simulation.simulate import default_threads, simulated_nodes


class Captured(Exception):
    """Stops the command once ``simulate`` was called."""


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    seen: list[dict[str, Any]] = []

    def fake_simulate(**kwargs: Any) -> None:
        seen.append(kwargs)
        raise Captured

    monkeypatch.setattr(simulate_module, "simulate", fake_simulate)
    return seen


def test_the_embedded_model_gets_one_thread_and_another_model_torchs_choice() -> None:
    assert default_threads({"base-model": ""}) == 1
    assert default_threads({}) == 1
    assert default_threads({"base-model": "/models/llama"}) == 0


@pytest.mark.parametrize(("argv", "threads"), [([], None), (["--threads", "0"], 0),
                                               (["--threads", "4"], 4)])  # fmt: skip
def test_the_command_passes_threads_through_and_leaves_the_default_to_simulate(
    calls: list[dict[str, Any]], argv: list[str], threads: int | None
) -> None:
    with pytest.raises(Captured):
        main(["simulate", *argv])
    assert calls[0]["num_threads"] == threads
    assert build_parser().parse_args(["simulate"]).threads is None


def test_every_simulated_node_gets_the_threads_and_its_own_config() -> None:
    nodes = simulated_nodes(3, num_threads=1, node_configs=[{"node-name": "a"}, {}])
    assert [n["num-threads"] for n in nodes] == [1, 1, 1]
    assert [n["partition-id"] for n in nodes] == [0, 1, 2]
    assert nodes[0]["node-name"] == "a" and "node-name" not in nodes[1]


def test_a_negative_thread_count_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match=r"`--threads` is -1: use an integer >= 1, or 0"):
        simulate_module.simulate(num_threads=-1)

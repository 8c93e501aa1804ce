"""Node setting `quantization`: read, checked, refused where bitsandbytes cannot run (torch-free
parts), and recorded per node in the round report."""

from __future__ import annotations

import pytest
from flwr.app import ConfigRecord, Message, RecordDict

from client.node import start as node_start
from client.settings import node_settings, quantization_problem
from common.config import SettingsError
from strategies import protocol as p
from strategies.flower.report import RoundReport, record_setup


def test_default_is_none_and_the_node_config_sets_it() -> None:
    assert node_settings({"partition-id": 0}, {}).quantization == "none"
    assert node_settings({"partition-id": 0, "quantization": "nf4"}, {}).quantization == "nf4"


def test_a_bad_value_and_a_cpu_device_are_refused_in_one_line_each() -> None:
    with pytest.raises(SettingsError) as err:
        node_settings({"partition-id": 0, "quantization": "fp4"}, {})
    assert err.value.problems == ["`quantization` is 'fp4': use one of none, nf4, int8"]
    with pytest.raises(SettingsError) as err:
        node_settings({"partition-id": 0, "quantization": "int8", "device": "cpu"}, {})
    (line,) = err.value.problems
    assert line.startswith("`quantization` is 'int8' but `device` is 'cpu'")
    assert "set quantization=none" in line and "\n" not in line


INSTALL = (
    "`quantization` is 'nf4' but bitsandbytes is not installed: pip install 'fedlora[gpu]' on the "
    "node, or set quantization=none"
)


@pytest.mark.parametrize(
    ("cuda", "installed", "expected"),
    [
        (False, True, "`quantization` is 'nf4' but CUDA is not available: bitsandbytes"),
        (False, False, "`quantization` is 'nf4' but CUDA is not available: bitsandbytes"),
        (True, False, INSTALL),
        (None, False, "`quantization` is 'nf4' but bitsandbytes is not installed"),
        (True, True, None),
    ],
)
def test_where_bitsandbytes_cannot_run(cuda: bool | None, installed: bool, expected: str) -> None:
    problem = quantization_problem("nf4", device="auto", cuda_available=cuda, installed=installed)
    if expected is None:
        assert problem is None
    else:
        assert problem is not None and problem.startswith(expected) and "\n" not in problem
    assert quantization_problem("none", device="cpu", cuda_available=False, installed=False) is None


def test_node_start_refuses_before_connecting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(node_start, "bitsandbytes_installed", lambda: False)
    with pytest.raises(SettingsError, match="bitsandbytes is not installed"):
        node_start.check_quantization_runs({"quantization": "nf4"}, device="auto")
    node_start.check_quantization_runs({"quantization": "none"}, device="auto")
    with pytest.raises(SettingsError, match="`device` is 'cpu'"):
        node_start.check_node_overrides({"quantization": "nf4"}, device="cpu")
    with pytest.raises(SettingsError, match="`dtype` is 'bf16'"):
        node_start.check_node_overrides({"dtype": "bf16"})
    node_start.check_node_overrides({"quantization": "none", "dtype": "bfloat16"}, device="cpu")
    node_start.check_node_overrides({"quantization": "int8", "gradient-checkpointing": True})
    monkeypatch.setattr(node_start, "bitsandbytes_installed", lambda: True)
    node_start.check_quantization_runs({"quantization": "int8"}, device="cuda:1")


def _reply(node_id: int, name: str, quantization: str) -> Message:
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 1
    instruction = Message(RecordDict(), dst_node_id=node_id, message_type="train", group_id="1")
    instruction.metadata.__dict__["_message_id"] = f"m{node_id}"
    adapter = ConfigRecord({p.NODE_NAME: name, p.QUANTIZATION: quantization})
    reply = Message(RecordDict({p.ADAPTER: adapter}), reply_to=instruction)
    reply.metadata.__dict__["_src_node_id"] = node_id
    return reply


def test_the_round_report_records_how_each_node_held_its_model() -> None:
    report = RoundReport(round=1)
    replies = [_reply(1, "hospital-a", "nf4"), _reply(2, "bank-b", "none"),
               _reply(3, "odd", "fp2")]  # fmt: skip
    record_setup(report, replies, lambda node, name: name or f"node-{node}")
    nodes = report.to_json()["nodes"]
    assert nodes["hospital-a"]["quantization"] == "nf4"
    assert nodes["bank-b"]["quantization"] == "none"
    assert "odd" not in nodes  # a value a node may not send is not recorded

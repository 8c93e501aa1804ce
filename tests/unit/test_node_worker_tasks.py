"""The node worker's handling of one task (client/node/worker.py), without processes."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace
from typing import Any

import pytest
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.constant import ErrorCode, SubStatus
from flwr.common.serde import message_to_proto
from flwr.supercore.task_identity import TaskIdentity

from client.node.worker import handle, heartbeat_fn

FEDLORA_FAB = "fedlora/fedlora"


@pytest.fixture(autouse=True)
def _task() -> None:
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 1  # as in a task


def _app(*, fail: bool = False) -> ClientApp:
    app = ClientApp()

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        if fail:
            raise RuntimeError("out of memory")
        return Message(RecordDict({"echo": ConfigRecord({"n": 1})}), reply_to=msg)

    return app


def _message() -> tuple[Message, Context]:
    msg = Message(RecordDict(), dst_node_id=1, message_type="train", group_id="1")
    msg.metadata.__dict__["_message_id"] = msg.object_id  # as pull_task_input sets it
    context = Context(run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config={})
    return msg, context


def test_a_fedlora_task_runs_the_client_app() -> None:
    msg, context = _message()
    outcome = handle(_app(), msg, context, FEDLORA_FAB)
    assert outcome.sub_status == SubStatus.COMPLETED and outcome.details == ""
    assert outcome.reply is not None and not outcome.reply.has_error()
    assert outcome.reply.content.config_records["echo"]["n"] == 1


def test_an_exception_becomes_flowers_error_reply() -> None:
    msg, context = _message()
    outcome = handle(_app(fail=True), msg, context, FEDLORA_FAB)
    assert outcome.sub_status == SubStatus.FAILED
    assert outcome.reply is not None and outcome.reply.has_error()
    assert outcome.reply.error.code == ErrorCode.CLIENT_APP_RAISED_EXCEPTION
    assert outcome.details == outcome.reply.error.reason  # what flwr-clientapp reports
    assert "out of memory" in outcome.details


def test_another_app_is_refused() -> None:
    msg, context = _message()
    outcome = handle(_app(), msg, context, "someone/else")
    assert outcome.reply is not None and outcome.reply.has_error()
    assert outcome.reply.error.code == ErrorCode.LOAD_CLIENT_APP_EXCEPTION
    assert "'someone/else'" in outcome.details


def test_a_task_the_supernode_dropped_is_marked_lost_without_signalling_the_worker() -> None:
    class Runtime:
        def SendTaskHeartbeat(self, _request: Any) -> Any:  # Flower's RPC name
            return SimpleNamespace(success=False)

    lost = threading.Event()
    beat = heartbeat_fn(Runtime(), lost)  # type: ignore[arg-type]
    assert beat() is True  # Flower's version raises SIGINT here: the whole worker would stop
    assert lost.is_set()


def test_the_message_of_a_task_acquired_before_it_was_stored_is_waited_for() -> None:
    """The SuperNode creates a task just before it stores the task's message; a worker that asks
    in between gets no message and must ask again, not fail the task without a reply."""
    from flwr.proto.runtime_pb2 import PullAppMessagesRequest, PullAppMessagesResponse

    from client.node.worker import WaitForMessage

    stored = Message(RecordDict(), dst_node_id=1, message_type="train", group_id="1")
    answers = [PullAppMessagesResponse(), PullAppMessagesResponse(),
               PullAppMessagesResponse(messages_list=[message_to_proto(stored)])]  # fmt: skip

    class Runtime:
        other = "passed through"

        def PullMessages(self, _request: Any) -> Any:  # Flower's RPC name
            return answers.pop(0)

    client = WaitForMessage(Runtime(), wait_s=5.0)  # type: ignore[arg-type]
    res = client.PullMessages(PullAppMessagesRequest())
    assert len(res.messages_list) == 1 and answers == []
    assert client.other == "passed through"

    answers[:] = [PullAppMessagesResponse()] * 1000
    started = time.monotonic()
    empty = WaitForMessage(Runtime(), wait_s=0.3).PullMessages(PullAppMessagesRequest())  # type: ignore[arg-type]
    assert not empty.messages_list and 0.3 <= time.monotonic() - started < 3.0  # then it gives up

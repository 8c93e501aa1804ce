"""An in-process Flower ``Grid``: the ClientApp runs in this process, one node after another.

What ``fedlora simulate`` and the tests use on small machines: no Ray, no SuperLink, torch
imported once. Messages keep Flower's types; each node has its own ``Context`` (node config and
state), as in a deployment. Errors raised by the ClientApp become error replies, as Flower does.
"""

from __future__ import annotations

import traceback
from collections.abc import Callable, Iterable, Sequence
from uuid import uuid4

from flwr.app import Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.serverapp import Grid
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity

ERROR_CLIENT_EXCEPTION = 500


class InProcessGrid(Grid):
    """Routes each message to ``client_app(message, context_of_its_node)`` synchronously."""

    def __init__(
        self,
        client_app: ClientApp,
        contexts: dict[int, Context],
        *,
        run_id: int = 1,
        on_reply: Callable[[Message, Message], None] | None = None,
        on_push: Callable[[Sequence[Message]], None] | None = None,
    ) -> None:
        self._client_app = client_app
        self._contexts = contexts
        self._run = Run.create_empty(run_id)
        self._pending: dict[str, Message] = {}
        self._on_reply = on_reply
        self._on_push = on_push
        # Who is sending: the SuperLink's ServerApp task, as Flower's runtime sets it.
        TaskIdentity.task_id = 1
        TaskIdentity.run_id = run_id
        TaskIdentity.node_id = SUPERLINK_NODE_ID

    def set_run(self, run: Run) -> None:
        self._run = run

    @property
    def run(self) -> Run:
        return self._run

    def create_message(
        self,
        content: RecordDict,
        message_type: str,
        dst_node_id: int,
        group_id: str,
        ttl: float | None = None,
    ) -> Message:
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self) -> Iterable[int]:
        return list(self._contexts)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        messages = list(messages)
        if self._on_push is not None:
            self._on_push(messages)
        ids = []
        for msg in messages:
            if msg.metadata.dst_node_id not in self._contexts:
                raise ValueError(f"no node with id {msg.metadata.dst_node_id} in this grid")
            msg.metadata.__dict__["_message_id"] = message_id = uuid4().hex
            self._pending[message_id] = msg
            ids.append(message_id)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        replies = []
        for message_id in message_ids:
            msg = self._pending.pop(message_id, None)
            if msg is not None:
                replies.append(self._deliver(msg))
        return replies

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        return self.pull_messages(self.push_messages(messages))

    def _deliver(self, msg: Message) -> Message:
        context = self._contexts[msg.metadata.dst_node_id]
        try:
            reply = self._client_app(msg, context)
        except Exception as err:  # a node's crash is its reply, not the server's crash
            reason = f"{type(err).__name__}: {err}\n{traceback.format_exc(limit=3)}"
            reply = Message(Error(code=ERROR_CLIENT_EXCEPTION, reason=reason), reply_to=msg)
        reply.metadata.__dict__["_message_id"] = uuid4().hex
        if self._on_reply is not None:
            self._on_reply(msg, reply)
        return reply


def node_contexts(
    node_configs: list[dict[str, bool | int | float | str]],
    run_config: dict[str, bool | int | float | str],
    *,
    run_id: int = 1,
) -> dict[int, Context]:
    """One Context per node; node ids are 1001, 1002, ... (stable, so tests can name them)."""
    return {
        1001 + i: Context(
            run_id=run_id,
            node_id=1001 + i,
            node_config=cfg,
            state=RecordDict(),
            run_config=run_config,
        )
        for i, cfg in enumerate(node_configs)
    }

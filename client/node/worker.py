"""The node worker: one long-lived process that runs every message of this node's ClientApp.

Flower 1.39's SuperNode runs a fresh ``flwr-clientapp`` process per message (through its
SuperExec); each one imports torch/transformers/peft/opacus and loads the base model again.
``fedlora node start`` instead runs ``flower-supernode --isolation process`` (no SuperExec) and
this worker in its place. It loops with Flower's own functions against the SuperNode's Runtime
API (HTTP, loopback):

1. ``AcquireTask`` for a ``flwr-clientapp`` task: a token for one message, as SuperExec gets it;
2. with that token, what ``flwr-clientapp`` does (``run_clientapp``): task heartbeats,
   ``pull_task_input``, the ClientApp, ``push_message``, ``push_task_output`` (the Context) —
   but without ``flwr_exit`` at the end, so the imports, the base-model cache
   (``client/model/cache.py``) and a GPU's CUDA context stay for the next message.

Each task pulls its input in a thread of its own (a stale task must not hold up the next one:
:func:`prepare`); the ClientApp runs one message at a time, in the main thread.

The ClientApp is the node's installed ``client.app:app``, imported once (a run whose FAB is not
fedlora's is refused with an error reply); it is loaded by reference, so this module stays
torch-free. A message is handled exactly as in ``flwr-clientapp``: the same Message and Context
in, the same reply out, errors turned into the same error replies; the privacy ledger is written
inside the ClientApp before the reply is pushed. If this process dies mid-message, the SuperNode
answers the message with Flower's "ClientApp crashed" error once the task's heartbeats stop,
and ``fedlora node start`` starts a new worker.
"""

from __future__ import annotations

import argparse
import queue
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from logging import ERROR, WARNING
from typing import Any

import httpx
from flwr.app import Context, Error, Message
from flwr.clientapp.client_app import ClientApp, LoadClientAppError
from flwr.common.constant import ErrorCode, SubStatus
from flwr.proto.runtime_pb2 import (
    AcquireTaskRequest,
    PullAppMessagesRequest,
    PullAppMessagesResponse,
    SendTaskHeartbeatRequest,
)
from flwr.supercore import log
from flwr.supercore.constant import TaskType
from flwr.supercore.heartbeat import HeartbeatSender
from flwr.supercore.interceptors import (
    RuntimeTokenHttpInterceptor,
    RuntimeVersionHttpInterceptor,
)
from flwr.supercore.object_ref import load_app
from flwr.supercore.retry import RetryInvoker, make_simple_http_retry_invoker
from flwr.supercore.runtime import RuntimeHttpClient
from flwr.supernode.runtime.run_clientapp import pull_task_input, push_message, push_task_output

from client.node.records import MessageRecord, timed_message

APP_REF = "client.app:app"
FAB_PUBLISHER = "fedlora/"
POLL_S = 0.2  # AcquireTask on loopback: cheap; Flower's SuperExec polls every 1 s
MESSAGE_WAIT_S = 30.0  # see WaitForMessage
COMPONENT = "flwr-clientapp"  # what the Runtime API's version check expects of a ClientApp


@dataclass(frozen=True)
class Outcome:
    """How one task ended: Flower's sub-status and details for ``PushTaskOutput``."""

    sub_status: str
    details: str
    reply: Message | None


def load_client_app() -> ClientApp:
    """Import the node's ClientApp once (torch, transformers, peft, opacus come with it)."""
    app = load_app(APP_REF, LoadClientAppError)
    if not isinstance(app, ClientApp):
        raise LoadClientAppError(f"`{APP_REF}` is not a Flower ClientApp")
    return app


def runtime_client(
    address: str, token: str | None = None, *, retry: RetryInvoker | None = None
) -> RuntimeHttpClient:
    """A Runtime API client as Flower's SuperExec (no token) or ClientApp (token) builds it."""
    interceptors: list[object] = [RuntimeVersionHttpInterceptor(component_name=COMPONENT)]
    if token is not None:
        interceptors.append(RuntimeTokenHttpInterceptor(token))
    return RuntimeHttpClient.from_server_address(
        server_address=address,
        insecure=True,  # loopback, the SuperNode's own Runtime API: no TLS, as Flower's default
        root_certificates=None,
        interceptors=interceptors,  # type: ignore[arg-type]
        retry_invoker=retry or make_simple_http_retry_invoker(),
    )


def acquire(client: RuntimeHttpClient) -> str | None:
    """The token of the next pending ClientApp task, or None."""
    res = client.AcquireTask(AcquireTaskRequest(supported_task_types=[TaskType.CLIENT_APP]))
    if res.HasField("task") and res.token:
        return str(res.token)
    return None


class WaitForMessage:
    """A task's Runtime API client whose ``PullMessages`` waits for the task's message.

    The SuperNode creates a task (``state.create_task``) just before it stores the task's
    message (``state.store_message``, flwr/supernode/start_client_internal.py). A fresh
    ``flwr-clientapp`` needs seconds to start, so it never asks in between; a worker that acquires
    the task at once may, and Flower's ``pull_task_input`` would then fail the task without a
    reply — and the SuperNode, which waits for that reply before it takes the next message,
    would wait forever. So an empty answer is asked again, for up to ``wait_s``.
    """

    def __init__(self, client: RuntimeHttpClient, *, wait_s: float = MESSAGE_WAIT_S) -> None:
        self._client = client
        self._wait_s = wait_s

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    def PullMessages(self, request: PullAppMessagesRequest) -> PullAppMessagesResponse:
        deadline = time.monotonic() + self._wait_s
        while True:
            res: PullAppMessagesResponse = self._client.PullMessages(request)
            if res.messages_list or time.monotonic() > deadline:
                return res
            time.sleep(0.05)


def heartbeat_fn(client: RuntimeHttpClient, lost: threading.Event) -> Callable[[], bool]:
    """Flower's task heartbeat (``make_task_heartbeat_fn_http``), except that a task the
    SuperNode no longer knows is marked lost instead of SIGINT to the whole process."""
    request = SendTaskHeartbeatRequest()

    def beat() -> bool:
        try:
            res = client.SendTaskHeartbeat(request)
        except httpx.TransportError:
            return False
        except httpx.HTTPStatusError as err:
            if err.response.status_code in (httpx.codes.SERVICE_UNAVAILABLE,
                                            httpx.codes.GATEWAY_TIMEOUT):  # fmt: skip
                return False
            raise
        if not res.success:
            lost.set()
        return True

    return beat


def handle(app: ClientApp, message: Message, context: Context, fab_id: str) -> Outcome:
    """Run the ClientApp on one message; errors become Flower's error replies."""
    try:
        if not fab_id.startswith(FAB_PUBLISHER):
            raise LoadClientAppError(f"run of app {fab_id!r}: this node runs only fedlora")
        reply = app(message=message, context=context)
        return Outcome(SubStatus.COMPLETED, "", reply)
    except Exception as ex:  # as flwr-clientapp: the reply carries the reason
        code = ErrorCode.CLIENT_APP_RAISED_EXCEPTION
        reason = str(type(ex)) + ":<'" + str(ex) + "'>"
        if isinstance(ex, LoadClientAppError):
            code, reason = ErrorCode.LOAD_CLIENT_APP_EXCEPTION, str(ex)
        log(ERROR, "ClientApp raised an exception", exc_info=ex)
        return Outcome(SubStatus.FAILED, reason, Message(Error(code=code, reason=reason),
                                                         reply_to=message))  # fmt: skip


@dataclass
class Task:
    """One ClientApp task (one message) of the SuperNode, held by its token: the Runtime API
    client that carries the token, and the task heartbeats that keep it alive."""

    client: RuntimeHttpClient
    retry: RetryInvoker
    heartbeat: HeartbeatSender
    lost: threading.Event
    message: Message | None = None
    context: Context | None = None
    fab_id: str = ""

    @classmethod
    def start(cls, address: str, token: str) -> Task:
        retry = make_simple_http_retry_invoker()
        client = runtime_client(address, token, retry=retry)
        lost = threading.Event()
        heartbeat = HeartbeatSender(heartbeat_fn(client, lost))
        heartbeat.start()
        return cls(client, retry, heartbeat, lost)

    def pull(self) -> None:
        """The message, the node's Context and the run, with Flower's ``pull_task_input``."""
        self.message, self.context, run, _fab = pull_task_input(WaitForMessage(self.client))  # type: ignore[arg-type]
        self.fab_id = run.fab_id

    def finish(self, outcome: Outcome) -> None:
        """Push the final status and the Context; end heartbeats (flwr-clientapp's exit)."""
        self.retry.max_tries = 1  # as flwr-clientapp's exit handler: do not block on a gone task
        push_task_output(client=self.client, context=self.context,
                         sub_status=outcome.sub_status, details=outcome.details)  # fmt: skip
        self.heartbeat.stop()
        self.client.close()


def prepare(address: str, token: str, ready: queue.Queue[Task]) -> None:
    """Pull a task's input (in a thread of its own), then queue the task for the ClientApp.

    A task can be stale: when a run stops while the SuperNode is receiving its message, the
    SuperNode has already created the task and stored the message but never gets its content, so
    pulling it waits (up to Flower's ``PULL_MAX_TIME``). Flower runs each task in a process of its
    own, so a stale one blocks nothing; here it only holds its own thread, never the next task.
    """
    task = Task.start(address, token)
    try:
        task.pull()
    except Exception as ex:  # no message to answer: report the task failed
        log(ERROR, "Node worker: could not pull the task's message", exc_info=ex)
        task.finish(Outcome(SubStatus.FAILED, f"node worker: {ex}", None))
        return
    ready.put(task)


def execute(app: ClientApp, task: Task) -> MessageRecord:
    """Run the ClientApp on a pulled task and push its reply, as ``flwr-clientapp`` does."""
    assert task.message is not None and task.context is not None
    with timed_message(task.message) as record:
        outcome = handle(app, task.message, task.context, task.fab_id)
        record.reply = outcome.reply
    try:
        if outcome.reply is not None and not task.lost.is_set():
            push_message(task.client, outcome.reply, task.context)
    except Exception as ex:  # as flwr-clientapp: the task ends failed
        log(ERROR, "Node worker: failed to push the reply", exc_info=ex)
        outcome = Outcome(SubStatus.FAILED, f"node worker: {ex}", None)
    finally:
        task.finish(outcome)
    if task.lost.is_set():
        log(WARNING, "Node worker: the SuperNode dropped this task (no heartbeat in time)")
    return record


def serve(address: str, *, echo: Callable[[str], None] = print) -> None:
    """Import the ClientApp, then take the SuperNode's ClientApp tasks as they come: each pulls
    its input in its own thread, the ClientApp runs them one at a time in this thread."""
    started = time.monotonic()
    app = load_client_app()
    echo(f"[fedlora] node worker ready in {time.monotonic() - started:.1f} s (imports)")
    control = runtime_client(address)
    ready: queue.Queue[Task] = queue.Queue()
    while True:
        try:
            token = acquire(control)
        except (httpx.HTTPError, OSError) as err:  # the SuperNode is (re)starting
            log(WARNING, "Node worker: Runtime API at %s not reachable: %s", address, err)
            time.sleep(1.0)
            continue
        if token is not None:
            threading.Thread(target=prepare, args=(address, token, ready), daemon=True).start()
        try:
            task = ready.get(timeout=POLL_S)
        except queue.Empty:
            continue
        echo(execute(app, task).line())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m client.node.worker", description=__doc__)
    parser.add_argument("--runtime-api-address", required=True, help="the SuperNode's HOST:PORT")
    args = parser.parse_args(argv)
    try:
        serve(args.runtime_api_address, echo=lambda line: print(line, flush=True))
    except KeyboardInterrupt:
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())

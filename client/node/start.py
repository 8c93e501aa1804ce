"""``fedlora node start``: check the node folder and data, then run the node: Flower's SuperNode
(``--isolation process``) and one long-lived node worker (``client/node/worker.py``) that runs
every message of the ClientApp, keeping the imports, the base model and a GPU's context.

Torch-free: the worker process loads the model. A worker that dies is started again; the
SuperNode answers the message it was on with Flower's "ClientApp crashed" error.
"""

from __future__ import annotations

import hashlib
import json
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from client.data.records import read_jsonl
from client.data.synth import EVAL_FILE, TRAIN_FILE
from client.node.enroll import split_address
from client.node.folder import NodeDir, NodeInfo, check_key_pair
from client.node.status import ask_status, refusal
from client.privacy.settings import KEYS as PRIVACY_KEYS
from client.privacy.settings import node_privacy
from client.settings import bitsandbytes_installed, node_settings, quantization_problem
from common.config import ConfigValue, SettingsError
from common.daemon import StopRequested, bin_dir, daemon_env, raise_on_signals, spawn, stop

# What Flower's SuperNode prints (exit code 305) when the SuperLink does not activate its key.
ACTIVATION_REFUSED = b"Failed to activate SuperNode"
ACTIVATION_RETRY_S = 150.0
RETRY_PAUSE_S = 10.0
WORKER_PAUSE_S = (1.0, 30.0)  # a worker that keeps dying is restarted ever more slowly
WORKER_STEADY_S = 60.0  # ... until it has stayed up this long


def check_data(data: Path) -> None:
    """The node's data folder must hold readable train.jsonl and eval.jsonl before connecting."""
    if not data.is_dir():
        raise FileNotFoundError(
            f"`--data` {str(data)!r} is not a folder: give a folder with {TRAIN_FILE} and "
            f"{EVAL_FILE} (`fedlora data synth --out DIR` writes an example)"
        )
    for name in (TRAIN_FILE, EVAL_FILE):
        if not (data / name).is_file():
            raise FileNotFoundError(
                f"`--data` {str(data)!r} has no {name}: put the node's records there as JSONL"
            )
        read_jsonl(data / name)  # a malformed line is named now, not mid-round


def check_federation(node: NodeDir, info: NodeInfo) -> str | None:
    """Refuse a node folder whose CA is not the one it joined with, or a server that is not
    that federation's; return a warning when the server is not reachable yet."""
    der = x509.load_pem_x509_certificate(node.ca.read_bytes()).public_bytes(
        serialization.Encoding.DER
    )
    if "sha256:" + hashlib.sha256(der).hexdigest() != info.ca_pin:
        raise RuntimeError(
            f"{node.ca} is not the CA this node joined with (pin {info.ca_pin[:19]}…): restore "
            "the node folder from its backup, or join again into a fresh folder"
        )
    if info.insecure:
        return None
    host, port = split_address(info.superlink)
    context = ssl.create_default_context(cafile=str(node.ca))
    try:
        with (
            socket.create_connection((host, port), timeout=10) as raw,
            context.wrap_socket(raw, server_hostname=host),
        ):
            return None
    except ssl.SSLCertVerificationError:
        raise RuntimeError(
            f"the server at {info.superlink} is not the federation this node joined (its "
            f"certificate does not chain to {node.ca}): check the address with the operator, or "
            "join the new federation with a new token into a fresh folder"
        ) from None
    except OSError as err:
        return f"the server at {info.superlink} is not reachable yet ({err}); the node keeps trying"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# What a node admin may set at `node start --config`: the node's own privacy policy (it may only
# tighten the run's), local tuning, how the base model is held (`dtype`, `quantization`,
# `gradient-checkpointing`) and `personal` (a private LoRA in the state folder,
# client/model/personal.py). Data, name, rank, device and state folder have flags.
MODEL_KEYS = ("dtype", "quantization", "gradient-checkpointing")
NODE_CONFIG_KEYS = (*PRIVACY_KEYS, "lora-alpha", "num-threads", "personal", *MODEL_KEYS)


def check_node_overrides(overrides: Mapping[str, ConfigValue], *, device: str = "auto") -> None:
    """Known keys, values the ClientApp will accept; raise naming every problem."""
    unknown = sorted(set(overrides) - set(NODE_CONFIG_KEYS))
    if unknown:
        raise SettingsError([f"`--config` key(s) {unknown} are not node settings: use "
                             f"{', '.join(NODE_CONFIG_KEYS)}"])  # fmt: skip
    node_privacy(overrides, {})  # types, ranges and impossible combinations, before connecting
    model = {k: v for k, v in overrides.items() if k in MODEL_KEYS}
    node_settings({"partition-id": 0, "device": device, **model}, {})  # values and combinations


def check_quantization_runs(overrides: Mapping[str, ConfigValue], *, device: str) -> None:
    """Refuse ``quantization`` here already where bitsandbytes is not installed (whether CUDA is
    present the worker checks when it loads the model: this process imports no torch)."""
    quantization = str(overrides.get("quantization", "none"))
    problem = quantization_problem(quantization, device=device, cuda_available=None,
                                   installed=bitsandbytes_installed())  # fmt: skip
    if problem:
        raise SettingsError([problem])


def node_config(
    node: NodeDir, info: NodeInfo, *, data: Path, rank: int | None, device: str,
    overrides: Mapping[str, ConfigValue] | None = None,
) -> str:  # fmt: skip
    """The SuperNode's ``--node-config``: what the ClientApp reads as this node's settings."""
    pairs: dict[str, ConfigValue] = {
        **(overrides or {}),
        "data-path": str(data.resolve()),
        "node-name": info.name,
        "state-dir": str(node.state.resolve()),
        "device": device,
    }
    if rank is not None:
        pairs["lora-rank"] = rank
    return " ".join(f"{k}={json.dumps(v)}" for k, v in pairs.items())


def supernode_argv(node: NodeDir, info: NodeInfo, *, config: str, port: int) -> list[str]:
    argv = [
        str(bin_dir() / "flower-supernode"),
        "--superlink",
        info.superlink,
        "--node-config",
        config,
        "--port",
        str(port),
        "--isolation",
        "process",  # no SuperExec: the node worker takes the ClientApp tasks
    ]
    if info.insecure:
        return [*argv, "--insecure"]
    return [
        *argv,
        "--root-certificates",
        str(node.ca),
        "--auth-supernode-private-key",
        str(node.key),
    ]


def start(
    root: Path,
    *,
    data: Path,
    rank: int | None = None,
    device: str = "auto",
    port: int | None = None,
    overrides: Mapping[str, ConfigValue] | None = None,
    echo: Callable[[str], None] = print,
) -> int:
    """Run Flower's SuperNode for this node until SIGINT/SIGTERM (reconnecting as needed)."""
    node = NodeDir(root)
    info = node.load()
    check_key_pair(node)
    warning = check_federation(node, info)
    check_data(data)
    check_node_overrides(overrides or {}, device=device)
    check_quantization_runs(overrides or {}, device=device)
    if rank is not None and rank < 1:
        raise ValueError(f"`--rank` is {rank}: use an integer >= 1")
    if info.insecure:
        echo("[fedlora] WARNING: --insecure node: traffic is PLAINTEXT and unauthenticated")
    node.state.mkdir(exist_ok=True)
    node.flower_home.mkdir(exist_ok=True)
    config = node_config(node, info, data=data, rank=rank, device=device, overrides=overrides)
    port = port or free_port()
    argv = supernode_argv(node, info, config=config, port=port)
    if warning:
        echo(f"[fedlora] {warning}")

    def refused() -> str | None:  # the server's word on this key: revoked, unknown, or None
        return refusal(ask_status(node, info), node, info)

    reason = refused()
    if reason is not None:
        echo(f"[fedlora] error: {reason}")
        return 1
    raise_on_signals()
    env = daemon_env({"FLWR_HOME": str(node.flower_home)})
    echo(f"[fedlora] node {info.name}: connecting to {info.superlink} (Ctrl-C to stop)")
    try:
        worker = Worker(worker_argv(port), env, echo)
        return _supervise(argv, env, echo, worker=worker, refused=refused)
    except StopRequested as sig:
        echo(f"[fedlora] {sig}: stopping node {info.name}")
        return 0


def worker_argv(port: int) -> list[str]:
    """The node worker's command line: this Python, against the SuperNode's Runtime API."""
    return [sys.executable, "-m", "client.node.worker", "--runtime-api-address",
            f"127.0.0.1:{port}"]  # fmt: skip


@dataclass
class Worker:
    """The node worker process, started again whenever it exits (``check`` from one thread)."""

    argv: list[str]
    env: Mapping[str, str]
    echo: Callable[[str], None]
    proc: subprocess.Popen[bytes] | None = None
    since: float = 0.0
    pause: float = WORKER_PAUSE_S[0]
    due: float = 0.0

    def check(self) -> None:
        """Start the worker if it is not running (after a pause if it died young)."""
        now = time.monotonic()
        if self.proc is not None and self.proc.poll() is None:
            if now - self.since > WORKER_STEADY_S:
                self.pause = WORKER_PAUSE_S[0]
            return
        if self.proc is not None:
            code = self.proc.returncode
            self.proc = None
            self.due = now + self.pause
            self.echo(f"[fedlora] the node worker stopped (exit code {code}); starting a new "
                      f"one in {self.pause:.0f} s")  # fmt: skip
            self.pause = min(self.pause * 2, WORKER_PAUSE_S[1])
        if now >= self.due:
            self.proc = spawn(self.argv, env=self.env)
            self.since = now

    def stop(self) -> None:
        if self.proc is not None:
            stop(self.proc)
            self.proc = None


Refusal = Callable[[], str | None]  # why the server refuses this node's key, or None


def _supervise(
    argv: list[str],
    env: Mapping[str, str],
    echo: Callable[[str], None],
    *,
    worker: Worker,
    refused: Refusal,
) -> int:
    """Run the SuperNode and the node worker; start the SuperNode again while the SuperLink
    refuses to activate it, and the worker whenever it exits.

    After a node crashes, the SuperLink counts its old session as online until two heartbeat
    intervals (60 s) pass and refuses to activate the same key meanwhile (Flower exit code 305).
    A revoked or unknown key is refused the same way: each refusal asks the enrollment service
    (``refused``) and stops at once when it names the key; a server that cannot say gets
    retries until ``ACTIVATION_RETRY_S``.
    """
    try:
        return _run_supernode(argv, env, echo, worker=worker, refused=refused)
    finally:
        worker.stop()


def _run_supernode(
    argv: list[str],
    env: Mapping[str, str],
    echo: Callable[[str], None],
    *,
    worker: Worker,
    refused: Refusal,
) -> int:
    refused_since: float | None = None
    while True:
        refusing = threading.Event()

        def watch(line: bytes, refusing: threading.Event = refusing) -> None:
            if ACTIVATION_REFUSED in line:
                refusing.set()

        proc = spawn(argv, env=env, watch=watch)
        try:
            while proc.poll() is None:
                worker.check()
                time.sleep(0.5)
        finally:
            stop(proc)
        if proc.returncode == 0 or not refusing.wait(timeout=3.0):  # the relay may lag
            break
        reason = refused()
        if reason is not None:
            echo(f"[fedlora] error: {reason}")
            return 1
        refused_since = refused_since or time.monotonic()
        if time.monotonic() - refused_since > ACTIVATION_RETRY_S:
            break
        echo(
            "[fedlora] the server did not activate this node yet (an earlier session may still "
            f"count as online for up to a minute); retrying in {RETRY_PAUSE_S:.0f} s"
        )
        time.sleep(RETRY_PAUSE_S)
    echo(
        f"[fedlora] error: the SuperNode stopped (exit code {proc.returncode}); if the server "
        "refused this node's key, ask the operator whether it was revoked "
        "(`fedlora server nodes`)"
    )
    return 1

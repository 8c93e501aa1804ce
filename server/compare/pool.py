"""``fedlora compare --jobs N``: arms in N worker processes, one arm at a time each.

Why: the embedded model is tiny (hidden size 128), so a training step is mostly per-operation
overhead that a second torch thread barely shortens; N processes with one thread each run N arms
at once. Results do not depend on where an arm runs: every arm seeds itself (data, LoRA init,
batches, aggregation order), so an arm run in a worker equals the same arm run in-process (a
test compares them bit for bit).

Protocol (no pickle): the parent writes one JSON job per line to a worker's stdin
(``{"index", "arm", "rounds", "out", "overrides"}``) and reads ``RESULT <json>`` (the arm's
``comparison.json`` record) from its stdout; the worker's progress lines go to stderr. An empty
line ends the worker. Jobs are handed out longest first to whichever worker is free. Workers are
ended when the parent ends, however it ends (the parent-death signal of common/daemon.py).
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import IO, Any

from common.config import ConfigValue
from common.daemon import with_parent_death_signal
from server.compare.arms import SETTINGS, Arm, ArmResult

RESULT = "RESULT "


def arm_cost(arm: Arm) -> float:
    """A rough relative cost of an arm (node-rounds of training), to start the longest first."""
    nodes = 6 if SETTINGS[arm.setting].data == "scarce" else 3
    dp = 1.5 if (arm.config.get("privacy") or SETTINGS[arm.setting].config.get("privacy")) else 1.0
    if arm.kind == "centralized":
        return 1.0 + nodes * 0.3  # one model's steps, evaluated on every node
    return nodes * dp * (1.0 + 0.25 * (arm.split - 1))  # a split arm evaluates more often


def run_in_workers(
    arms: Sequence[Arm],
    *,
    rounds: int,
    out: Path,
    overrides: Mapping[str, ConfigValue],
    jobs: int,
    on_result: Callable[[int, ArmResult], None],
    echo: Callable[[str], None],
) -> None:
    """Run ``arms`` in ``jobs`` worker processes; ``on_result(index, result)`` as each ends
    (in the parent, one call at a time)."""
    todo: queue.Queue[int] = queue.Queue()
    for index in sorted(range(len(arms)), key=lambda i: -arm_cost(arms[i])):
        todo.put(index)
    threads = max(1, (os.cpu_count() or 1) // jobs)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "OPENBLAS_NUM_THREADS": "1",
           "FEDLORA_COMPARE_THREADS": str(threads)}  # fmt: skip
    lock = threading.Lock()
    failures: list[str] = []

    def drive(worker: subprocess.Popen[str]) -> None:
        assert worker.stdin is not None and worker.stdout is not None
        while not failures:
            try:
                index = todo.get_nowait()
            except queue.Empty:
                break
            job = {"index": index, "arm": asdict(arms[index]), "rounds": rounds,
                   "out": str(out), "overrides": dict(overrides)}  # fmt: skip
            worker.stdin.write(json.dumps(job) + "\n")
            worker.stdin.flush()
            record = _read_result(worker.stdout)
            if record is None:
                failures.append(f"worker {worker.pid} ended during `{arms[index].label}` "
                                f"(exit code {worker.wait()}): see its output above")  # fmt: skip
                break
            with lock:
                on_result(index, from_record(arms[index], record))
        worker.stdin.close()

    command = with_parent_death_signal([sys.executable, "-m", "server.compare.pool"])
    pipe = subprocess.PIPE
    workers = [subprocess.Popen(command, stdin=pipe, stdout=pipe, text=True, env=env)
               for _ in range(min(jobs, len(arms)))]  # fmt: skip
    drivers = [threading.Thread(target=drive, args=(w,), daemon=True) for w in workers]
    try:
        for thread in drivers:
            thread.start()
        for thread in drivers:
            thread.join()
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.terminate()
            worker.wait()
    if failures:
        raise RuntimeError("; ".join(failures))
    echo(f"[compare] {len(arms)} arms ran in {len(workers)} worker processes")


def _read_result(stream: IO[str]) -> dict[str, Any] | None:
    for line in stream:
        if line.startswith(RESULT):
            record: dict[str, Any] = json.loads(line.removeprefix(RESULT))
            return record
        sys.stdout.write(line)  # anything else the arm printed
    return None


def from_record(arm: Arm, record: Mapping[str, Any]) -> ArmResult:
    """The :class:`ArmResult` of a ``comparison.json`` record (exact: JSON keeps every float)."""
    return ArmResult(
        arm=arm,
        curve=[float(x) for x in record["curve"]],
        final_nodes={str(k): float(v) for k, v in record["final_nodes"].items()},
        bytes_up=float(record["bytes_up"]),
        bytes_down=float(record["bytes_down"]),
        wall_s=float(record["wall_s"]),
        notes=str(record["notes"]),
    )


def serve(stdin: IO[str], stdout: IO[str]) -> None:
    """The worker: run each job line's arm, answer with its record; stop at an empty line."""
    import torch

    from server.compare.run import run_arm, to_record

    threads = int(os.environ.get("FEDLORA_COMPARE_THREADS", "0"))
    if threads > 0:
        torch.set_num_threads(threads)

    def echo(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    for line in stdin:
        if not line.strip():
            break
        job = json.loads(line)
        arm = Arm(**job["arm"])
        result = run_arm(arm, rounds=int(job["rounds"]), out=Path(job["out"]),
                         overrides=job["overrides"], echo=echo)  # fmt: skip
        stdout.write(RESULT + json.dumps(to_record(result, job["overrides"])) + "\n")
        stdout.flush()


if __name__ == "__main__":
    serve(sys.stdin, sys.stdout)

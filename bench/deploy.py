"""The deploy section: a real loopback deployment (TLS, node keys, ``fedlora server start``, two
``fedlora node start``), measured in one run. Long, so ``make bench`` runs it only with
``--deploy`` (``make bench-deploy``); on 2 busy CPU cores it takes about 15 minutes.

- **node overhead**: each node worker logs one line per message (client/node/records.py):
  ``round R train: S s (load L, apply A, train T, other O)``. Overhead = the message's seconds
  minus its training and scoring; per round (train + evaluate message) over the round's training
  time, rounds 1-3 (round 0's first evaluation, with the base-model load, is in the detail).
  On the embedded model and on a random-weight model with SmolLM2-135M's shapes.
- **deployed / simulate**: seconds per round of ``fedlora run`` on the deployment over those of
  ``fedlora simulate`` on the same nodes (names, data, ranks, seeds) at a workload where training
  takes at least 20 s per node and round (``elapsed_s`` of metrics.jsonl, rounds 1-3): 100 local
  steps, and where they train faster than that, again with the steps scaled to about 25 s.
  Every node trains with one CPU thread: the deployed nodes side by side, simulate's one after
  the other in one process (more threads only contend on a shared 2-core machine). Flower's
  polling is the floor of a deployed round: the SuperNode asks for messages every 3 s when idle
  and the ServerApp polls for replies every 3 s, for the train and the evaluate message alike.
- **memory**: each node worker's resident memory after round 2 and after round 20 of a light run.
"""

from __future__ import annotations

import contextlib
import math
import re
import shutil
import statistics
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import psutil

from bench.common import Figure
from tests.deploy_harness import (
    FEDLORA,
    Federation,
    env,
    federation_at,
    run_records,
    wait_for,
)

NODES = {"hospital-a": ("hospital-cardiology", 4), "bank-b": ("bank-transactions", 8)}
RECORD = re.compile(r"\[fedlora\] round (\d+) (train|evaluate): ([\d.]+) s \(([^)]*)\)")
MIN_TRAIN_S = 20.0  # deployed / simulate is measured where training takes at least this long
POLL_FLOOR_S = 3.0  # flwr 1.39: SuperNode idle poll, ServerApp reply poll (time.sleep(3))
MIB = 1024**2


def _configs(items: dict[str, object]) -> list[str]:
    return [arg for key, value in items.items() for arg in ("--config", f"{key}={value}")]


def message_lines(log: str) -> list[tuple[int, str, float, dict[str, float]]]:
    """(round, kind, seconds, {phase: seconds}) of each record line of a node log."""
    found = []
    for rnd, kind, seconds, parts in RECORD.findall(log):
        split = {k: float(v) for k, v in (part.split() for part in parts.split(", "))}
        found.append((int(rnd), kind, float(seconds), split))
    return found


def overhead(lines: list[tuple[int, str, float, dict[str, float]]]) -> tuple[float, float]:
    """(overhead seconds, training seconds) summed over the messages of rounds >= 1."""
    spent = trained = 0.0
    for rnd, _, seconds, split in lines:
        if rnd >= 1:
            trained += split.get("train", 0.0)
            spent += seconds - split.get("train", 0.0) - split.get("eval", 0.0)
    return spent, trained


def overhead_by_round(lines: list[tuple[int, str, float, dict[str, float]]]) -> dict[int, float]:
    """Node overhead / training time of each round >= 1 (all nodes' messages of the round)."""
    rounds = sorted({rnd for rnd, *_ in lines if rnd >= 1})
    found = {}
    for rnd in rounds:
        spent, trained = overhead([line for line in lines if line[0] == rnd])
        found[rnd] = spent / trained if trained else math.nan
    return found


def per_round(records: list[dict[str, object]]) -> float:
    """Seconds per round from metrics.jsonl's ``elapsed_s``: round 0's end to the last's."""
    elapsed = [float(r["elapsed_s"]) for r in records]  # type: ignore[arg-type]
    return (elapsed[-1] - elapsed[0]) / (len(elapsed) - 1)


class _Run:
    """``fedlora run`` in the background; its output line by line as it comes."""

    def __init__(self, fed: Path, rounds: int, config: dict[str, object]) -> None:
        self.lines: list[str] = []
        argv = [str(FEDLORA), "run", "--dir", str(fed), "--rounds", str(rounds), *_configs(config)]
        self.proc = subprocess.Popen(argv, env=env(), stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True)  # fmt: skip
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)

    def saw(self, text: str) -> bool:
        return any(text in line for line in self.lines)

    def finish(self, timeout: float = 3600.0) -> str:
        code = self.proc.wait(timeout=timeout)
        self.reader.join(timeout=10)
        output = "".join(self.lines)
        if code != 0:
            raise RuntimeError(f"fedlora run failed ({code}):\n{output[-3000:]}")
        return output


def worker(fed: Federation, name: str) -> psutil.Process:
    """The node's worker process (the one holding torch and the base model)."""
    proc = psutil.Process(fed.daemons.procs[name].pid)
    for child in proc.children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if "client.node.worker" in child.cmdline():
                return child
    raise LookupError(f"{name} runs no node worker")


@contextlib.contextmanager
def deployment(root: Path, *, threads: int = 1) -> Iterator[Federation]:
    """A fresh loopback federation with the two nodes online; everything ended afterwards."""
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    with federation_at(root) as fed:
        for name, (data, rank) in NODES.items():
            fed.join_and_start(name, data, rank, "--config", f"num-threads={threads}")
        fed.wait_online(*NODES, timeout=180)
        wait_for(lambda: all(_has_worker(fed, n) for n in NODES), 120, "node workers")
        yield fed


def _has_worker(fed: Federation, name: str) -> bool:
    try:
        worker(fed, name)
    except LookupError:
        return False
    return True


def _deployed(fed: Federation, rounds: int, config: dict[str, object]) -> tuple[float, list]:
    """Run ``rounds`` rounds; seconds per round and each node's record lines of this run."""
    before = {n: len(message_lines(fed.daemons.log(n))) for n in NODES}
    output = _Run(fed.fed, rounds, config).finish()
    lines = {n: message_lines(fed.daemons.log(n))[before[n] :] for n in NODES}
    return per_round(run_records(output)), [x for n in NODES for x in lines[n]]


def _simulated(fed: Federation, rounds: int, config: dict[str, object], out: Path) -> float:
    from server.simulation.simulate import simulate

    nodes = [{"data-path": str(fed.root / "data" / data), "node-name": name, "lora-rank": rank}
             for name, (data, rank) in NODES.items()]  # fmt: skip
    outcome = simulate(
        num_nodes=len(NODES),
        run_config={**config, "num-server-rounds": rounds, "run-dir": str(out / "runs")},  # type: ignore[dict-item]
        node_configs=nodes,  # type: ignore[arg-type]
        num_threads=1,
        echo=lambda _: None,
        state_dir=out / "state",
    )
    if outcome.stopped is not None:
        raise RuntimeError(f"simulate stopped: {outcome.stopped}")
    return per_round(outcome.records)


def _overhead_figure(name: str, lines: list, goal: str = "") -> Figure:
    spent, trained = overhead(lines)
    first = [s - split.get("eval", 0.0) for r, _, s, split in lines if r == 0]
    steady = [s for r, _, s, _ in lines if r >= 1]
    each = ", ".join(f"{v:.3f}" for v in overhead_by_round(lines).values())
    return Figure("deploy", f"{name}: node overhead / training time", spent / trained, "", goal,
                  f"{spent / len(steady):.2f} s per message against {trained / 3 / len(NODES):.1f} "
                  f"s training per node-round; rounds 1-3: {each}; round 0 (load): "
                  f"{max(first):.1f} s")  # fmt: skip


def rss_figure(fed: Federation, *, rounds: int = 20) -> Figure:
    """Each worker's resident memory after round 2 and after round ``rounds`` of a light run."""
    workers = {n: worker(fed, n) for n in NODES}
    light = {"local-steps": 4, "batch-size": 4, "synth-eval-examples": 16, "min-nodes": 2}
    run = _Run(fed.fed, rounds, light)
    rss: dict[int, dict[str, int]] = {}
    for rnd in (2, rounds):
        wait_for(lambda rnd=rnd: run.saw(f"[fedlora] round {rnd}/{rounds}"), 1800, f"round {rnd}")
        rss[rnd] = {n: w.memory_info().rss for n, w in workers.items()}
    run.finish()
    ratios = {n: rss[rounds][n] / rss[2][n] for n in NODES}
    worst = max(ratios, key=lambda n: ratios[n])
    detail = "; ".join(f"{n} {rss[2][n] / MIB:.0f} → {rss[rounds][n] / MIB:.0f} MiB" for n in NODES)
    assert all(w.is_running() for w in workers.values()), "a worker was restarted"
    return Figure("deploy", f"worker RSS after round {rounds} / after round 2 ({worst})",
                  ratios[worst], "", "<= 1.05", detail)  # fmt: skip


PARTS = ("heavy", "rss", "135m")


def run(
    *, out: Path, smollm_dir: Path | None, steps: int = 100, rss_rounds: int = 20,
    parts: tuple[str, ...] = PARTS,
) -> list[Figure]:  # fmt: skip
    """The deploy figures (module doc), each printed as soon as it is measured; ``smollm_dir``
    None leaves the 135M shape out. A part whose run fails is reported, not fatal."""
    figures: list[Figure] = []
    with deployment(out / "deploy") as fed:
        for part in parts:
            try:
                found = _part(part, fed, out=out, smollm_dir=smollm_dir, steps=steps,
                              rss_rounds=rss_rounds)  # fmt: skip
            except (RuntimeError, AssertionError) as err:
                reason = str(err).strip().splitlines()[-1][:200]
                found = [Figure("deploy", f"{part}: not measured", math.nan, "", "",
                                f"the run failed: {reason}")]  # fmt: skip
            for figure in found:
                print(f"[bench] {figure.name}: {figure.value:.3g} ({figure.detail})", flush=True)
            figures += found
    return figures


def _training_seconds(lines: list[tuple[int, str, float, dict[str, float]]]) -> float:
    """Mean training seconds per node and round, rounds 1-3."""
    return statistics.mean(s["train"] for r, k, _, s in lines if k == "train" and r >= 1)


def scaled_steps(steps: int, trained: float) -> int:
    """Local steps that make training take about 25 s per round, from ``steps`` taking
    ``trained`` seconds (so at least :data:`MIN_TRAIN_S` despite some noise)."""
    return max(steps, math.ceil(steps * 1.25 * MIN_TRAIN_S / max(trained, 1e-3)))


def _part(
    part: str, fed: Federation, *, out: Path, smollm_dir: Path | None, steps: int,
    rss_rounds: int,
) -> list[Figure]:  # fmt: skip
    if part == "heavy":
        heavy = {"local-steps": steps, "batch-size": 8, "synth-eval-examples": 16, "min-nodes": 2}
        deployed, lines = _deployed(fed, 3, heavy)
        trained = _training_seconds(lines)
        if trained < MIN_TRAIN_S:  # a fast machine: more steps, until training takes >= 20 s
            heavy["local-steps"] = steps = scaled_steps(steps, trained)
            deployed, lines = _deployed(fed, 3, heavy)
            trained = _training_seconds(lines)
        simulated = _simulated(fed, 3, heavy, out / "deploy-simulate")
        return [
            _overhead_figure("embedded", lines),
            Figure(
                "deploy", "embedded: deployed / simulate seconds per round", deployed / simulated,
                "×", "<= 1.5",
                f"{deployed:.1f} vs {simulated:.1f} s per round, {trained:.1f} s training per "
                f"node ({steps} local steps); Flower's polling floor: SuperNode and ServerApp "
                f"each poll every {POLL_FLOOR_S:.0f} s, for train and evaluate (≈ 6 s a round on "
                "average, up to 12)",
            ),
        ]  # fmt: skip
    if part == "rss":
        return [rss_figure(fed, rounds=rss_rounds)] if rss_rounds else []
    if part == "135m" and smollm_dir is not None:
        small = {"base-model": str(smollm_dir), "local-steps": 4, "batch-size": 2,
                 "max-length": 64, "synth-eval-examples": 16, "min-nodes": 2}  # fmt: skip
        _, lines = _deployed(fed, 3, small)
        return [_overhead_figure("135M shape", lines, "<= 0.10")]
    return []

"""One federated run: the strategy's round loop plus evaluation, records and the final export."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, MetricRecord
from flwr.serverapp import Grid

from server.run.checkpoint import base_model_identity
from server.run.export import ADAPTER_DIR, export_adapter
from server.run.identities import EnrolledNodes
from server.run.modules import announced_modules
from server.run.resume import Resumable, start_or_resume
from server.run.runlog import RunLog
from server.run.settings import ServerSettings
from strategies import protocol as p
from strategies.flower.base import LoraStrategy, NotEnoughNodesError
from strategies.flower.rounds import RoundFailedError
from strategies.registry import strategy_class


@dataclass(frozen=True)
class RunOutcome:
    run_dir: Path
    adapter_dir: Path | None
    records: list[dict[str, Any]]
    # Why the run stopped early (a round failed after its retries), or None: it ran to the end.
    stopped: str | None = None


def build_strategy(settings: ServerSettings) -> LoraStrategy:
    cls = strategy_class(settings.strategy)
    return cls(
        federation=settings.federation,
        options=settings.aggregation,
        limits=settings.limits,
        policy=settings.policy,
        modules=announced_modules(settings.base_model, settings.target_modules),
        enrolled=EnrolledNodes(settings.enrolled_nodes) if settings.enrolled_nodes else None,
    )


def run_federation(
    grid: Grid,
    settings: ServerSettings,
    *,
    echo: Callable[[str], None] = print,
    on_run_dir: Callable[[Path], None] | None = None,
) -> RunOutcome:
    """Evaluate the base model at every node, run the rounds, export the global adapter.

    With ``resume-from`` set, continue that run folder from its checkpoint instead. A round that
    fails after its retries stops the run cleanly: the last completed round stays checkpointed.
    """
    strategy = build_strategy(settings)
    run = start_or_resume(settings, strategy, base_model=base_model_identity(settings.base_model))
    runlog = RunLog(run.run_dir, settings.num_rounds, echo=echo, records=run.records)
    echo(f"[fedlora] run folder {run.run_dir}" + (f" (resumed after round {run.completed})"
                                                  if run.resumed else ""))  # fmt: skip
    if on_run_dir is not None:  # e.g. `fedlora simulate` keeps the nodes' state folders in it
        on_run_dir(runlog.run_dir)
    train_config = ConfigRecord(dict[str, Any](settings.train.to_config()))
    eval_config = ConfigRecord({"max-length": settings.train.max_length})
    round_end = _round_end(settings, strategy, runlog, run)
    stopped = None
    try:
        if not run.resumed:
            replies = grid.send_and_receive(
                strategy.configure_evaluate(0, run.initial, eval_config, grid),
                timeout=settings.round_timeout_s,
            )
            strategy.aggregate_evaluate(0, replies)
        strategy.start(
            grid,
            run.initial,
            num_rounds=settings.num_rounds - run.completed,
            timeout=settings.round_timeout_s,
            train_config=train_config,
            evaluate_config=eval_config,
            evaluate_fn=round_end,
        )
    except (RoundFailedError, NotEnoughNodesError) as err:
        stopped = str(err)
        _record_stop(strategy, runlog, err)
        echo(f"[fedlora] stopped: {stopped}; resume with `resume-from` = {run.run_dir}")
    return _finish(settings, strategy, runlog, run.run_dir, stopped=stopped, echo=echo)


def _record_stop(
    strategy: LoraStrategy, runlog: RunLog, err: RoundFailedError | NotEnoughNodesError
) -> None:
    """The failed round's record, with the reason, after the last completed one."""
    if isinstance(err, RoundFailedError):
        runlog.write({**strategy.report(err.server_round).to_json(), "stopped": err.reason})
    else:
        done = runlog.records[-1]["round"] + 1 if runlog.records else 0
        runlog.write({"round": done, "aggregated": False, "nodes": {}, "stopped": str(err)})


def _round_end(
    settings: ServerSettings, strategy: LoraStrategy, runlog: RunLog, run: Resumable
) -> Callable[[int, ArrayRecord], MetricRecord | None]:
    """Flower's end-of-round hook: server-side evaluation, metrics.jsonl, the checkpoint."""
    server_eval = _server_evaluator(settings)

    def round_end(flower_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        if flower_round == 0 and run.resumed:
            return None  # resumed: the checkpointed round is recorded already
        server_round = flower_round + strategy.round_offset
        report = strategy.report(server_round)
        metrics = server_eval(arrays) if server_eval else None
        if metrics is not None:
            report.extra["server_eval_loss"] = float(metrics[p.EVAL_LOSS])  # type: ignore[arg-type]
        runlog.write(report.to_json())
        run.save(strategy, server_round, runlog.records)
        return metrics

    return round_end


def _finish(
    settings: ServerSettings,
    strategy: LoraStrategy,
    runlog: RunLog,
    run_dir: Path,
    *,
    stopped: str | None,
    echo: Callable[[str], None],
) -> RunOutcome:
    completed = [r for r in runlog.records if "stopped" not in r]
    provenance = {
        "strategy": settings.strategy,
        "rounds": completed[-1]["round"] if completed else 0,
        "global_rank": completed[-1].get("global_rank", 0) if completed else 0,
        "base_model": settings.base_model or "embedded",
    }
    adapter_dir = export_adapter(
        strategy.global_arrays(),  # not the checkpoint's extras (server momentum)
        base_model=settings.base_model,
        out_dir=run_dir / ADAPTER_DIR,
        provenance=provenance,
    )
    echo(runlog.summary_table())
    echo(f"[fedlora] adapter: {adapter_dir or '(none: no round was aggregated)'}")
    return RunOutcome(run_dir, adapter_dir, runlog.records, stopped=stopped)


def _server_evaluator(settings: ServerSettings) -> Callable[[ArrayRecord], MetricRecord] | None:
    """Loss of the global model on a dataset the server itself holds (optional)."""
    if settings.server_eval_data is None:
        return None
    return _ServerEvaluator(settings, settings.server_eval_data)


class _ServerEvaluator:
    """Loads the base model and the encoded data once, on first use (torch stays out of
    start-up); each round attaches the global adapter, scores it, and detaches it again."""

    def __init__(self, settings: ServerSettings, path: Path) -> None:
        self.settings = settings
        self.path = path
        self.loaded: tuple[Any, Any, list[list[int]]] | None = None

    def __call__(self, arrays: ArrayRecord) -> MetricRecord:
        import torch

        from client.data.records import read_jsonl
        from client.model.loading import load_base, wrap_global_adapter
        from client.training import encode, evaluate_loss

        if self.loaded is None:
            model, tokenizer = load_base(self.settings.base_model, device=torch.device("cpu"))
            rows = encode(
                read_jsonl(self.path), tokenizer, max_length=self.settings.train.max_length
            )
            self.loaded = (model, tokenizer, rows)
        model, tokenizer, rows = self.loaded
        peft_model = wrap_global_adapter(model, p.from_record(arrays))
        scored = model if peft_model is None else peft_model
        loss, _ = evaluate_loss(scored, rows, pad_id=tokenizer.pad_token_id)
        if peft_model is not None:
            self.loaded = (peft_model.unload(), tokenizer, rows)  # the base weights, untouched
        return MetricRecord({p.EVAL_LOSS: loss, p.NUM_EXAMPLES: len(rows)})

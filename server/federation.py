"""One federated run: the strategy's round loop plus evaluation, records and the final export."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, MetricRecord
from flwr.serverapp import Grid

from server.export import ADAPTER_DIR, export_adapter
from server.runlog import RunLog, new_run_dir
from server.settings import ServerSettings
from strategies import protocol as p
from strategies.base import LoraStrategy
from strategies.registry import strategy_class


@dataclass(frozen=True)
class RunOutcome:
    run_dir: Path
    adapter_dir: Path | None
    records: list[dict[str, Any]]


def build_strategy(settings: ServerSettings) -> LoraStrategy:
    cls = strategy_class(settings.strategy)
    return cls(federation=settings.federation, options=settings.aggregation)


def _settings_json(settings: ServerSettings) -> dict[str, Any]:
    return json.loads(json.dumps(asdict(settings), default=str))  # type: ignore[no-any-return]


def run_federation(
    grid: Grid, settings: ServerSettings, *, echo: Callable[[str], None] = print
) -> RunOutcome:
    """Evaluate the base model at every node, run the rounds, export the global adapter."""
    run_dir = new_run_dir(settings.run_dir)
    (run_dir / "settings.json").write_text(json.dumps(_settings_json(settings), indent=2))
    echo(f"[fedlora] run folder {run_dir}")
    strategy = build_strategy(settings)
    runlog = RunLog(run_dir, settings.num_rounds, echo=echo)
    train_config = ConfigRecord(dict[str, Any](settings.train.to_config()))
    eval_config = ConfigRecord({"max-length": settings.train.max_length})
    server_eval = _server_evaluator(settings)

    def round_end(server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        report = strategy.report(server_round)
        metrics = server_eval(arrays) if server_eval else None
        if metrics is not None:
            report.extra["server_eval_loss"] = float(metrics[p.EVAL_LOSS])  # type: ignore[arg-type]
        runlog.write(report.to_json())
        return metrics

    initial = ArrayRecord()
    replies = grid.send_and_receive(
        strategy.configure_evaluate(0, initial, eval_config, grid), timeout=settings.round_timeout_s
    )
    strategy.aggregate_evaluate(0, replies)
    result = strategy.start(
        grid,
        initial,
        num_rounds=settings.num_rounds,
        timeout=settings.round_timeout_s,
        train_config=train_config,
        evaluate_config=eval_config,
        evaluate_fn=round_end,
    )
    provenance = {
        "strategy": settings.strategy,
        "rounds": settings.num_rounds,
        "global_rank": runlog.records[-1].get("global_rank", 0) if runlog.records else 0,
        "base_model": settings.base_model or "embedded",
    }
    adapter_dir = export_adapter(
        p.from_record(result.arrays),
        base_model=settings.base_model,
        out_dir=run_dir / ADAPTER_DIR,
        provenance=provenance,
    )
    echo(runlog.summary_table())
    echo(f"[fedlora] adapter: {adapter_dir or '(none: no round was aggregated)'}")
    return RunOutcome(run_dir, adapter_dir, runlog.records)


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

        from client.data import read_jsonl
        from client.model import load_base, wrap_global_adapter
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

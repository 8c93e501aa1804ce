"""The thin Flower layer shared by every fedlora strategy.

Flower's ``Strategy.start()`` is the one round loop. This base class fills its hooks: picks nodes
(with a bounded wait), sends the global adapter, validates replies into values, records per-node
numbers, and hands the accepted updates to one abstract method, :meth:`LoraStrategy.aggregate`,
that each algorithm implements with the pure functions of its own module.
"""

from __future__ import annotations

import math
import secrets
from abc import abstractmethod
from collections.abc import Iterable, Sequence
from logging import INFO, WARNING
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.common import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy
from numpy.typing import NDArray

from common.config import ConfigValue
from strategies import protocol as p
from strategies.flower.labels import NodeLabels
from strategies.flower.privacy_report import record_privacy
from strategies.flower.replies import (
    ClientUpdate,
    EnrolledNames,
    Expectation,
    Parsed,
    Rejected,
    aggregation_order,
    parse_eval_reply,
    parse_train_replies,
    read_global,
    screen_updates,
)
from strategies.flower.report import RoundReport, record_setup
from strategies.flower.rounds import NotEnoughNodesError as NotEnoughNodesError  # re-exported
from strategies.flower.rounds import (
    RoundFailedError,
    RoundPolicy,
    addressee,
    sample_nodes,
    screen_replies,
    wait_for_nodes,
)
from strategies.math.factors import LowRank, join_factor_keys
from strategies.math.packing import module_digest
from strategies.math.validation import ReplyLimits, Shapes, fingerprint
from strategies.options import AggregationOptions as AggregationOptions  # re-exported
from strategies.options import Federation as Federation  # re-exported

GlobalAdapter = dict[str, LowRank]


class LoraStrategy(Strategy):
    """Base for strategies that exchange LoRA factors and keep a low-rank global adapter."""

    name = "base"
    # What the strategy can aggregate; the settings refuse the rest before round 1.
    accepts_heterogeneous_ranks = True
    accepts_server_lr = True  # False: the global is replaced by a mean, not moved by an update
    accepts_server_momentum = False  # True: FedAvgM's `server-momentum` (flora)

    def __init__(
        self,
        *,
        federation: Federation,
        options: AggregationOptions,
        limits: ReplyLimits | None = None,
        policy: RoundPolicy | None = None,
        modules: Shapes | None = None,
        enrolled: EnrolledNames | None = None,
    ) -> None:
        self.federation = federation
        self.enrolled = enrolled  # deployment: node id -> enrolled name (replies.identity_problem)
        self.options = options
        self.limits = limits or ReplyLimits()
        self.policy = policy or RoundPolicy()
        # The LoRA modules every reply must carry, module -> (out, in), announced by the server
        # from the base model; None: the global adapter's, and in round 1 the majority's.
        self.modules = dict(modules) if modules is not None else None
        # Per run: fingerprints of another run's adapters never match this run's.
        self.salt = secrets.token_hex(8)
        # Rounds completed before this process started (resume): Flower's loop counts from 1.
        self.round_offset = 0
        self.rounds: dict[int, RoundReport] = {}
        # node id -> the rank of its last accepted train reply
        self.node_ranks: dict[int, int] = {}
        self._labels = NodeLabels()
        self._global: GlobalAdapter = {}
        # The ArrayRecord `_global` was read from, and its fp32 wire form: Flower hands the same
        # record to configure_evaluate and the next configure_train, so each is built once.
        self._source: ArrayRecord | None = None
        self._wire: ArrayRecord | None = None
        # This round's train instructions (Flower's grid sets their message ids when pushing).
        self._grid: Grid | None = None
        self._train_config = ConfigRecord()
        self._sent: list[Message] = []
        self._sent_eval: list[Message] = []
        self._fingerprint: tuple[int, str] = (-1, "")

    # -- the algorithm ------------------------------------------------------------------------
    @abstractmethod
    def aggregate(
        self, server_round: int, updates: Sequence[ClientUpdate], global_adapter: GlobalAdapter
    ) -> GlobalAdapter:
        """Combine accepted updates into the new global adapter; record extras in the report."""

    def screen_update(
        self, update: ClientUpdate, round_updates: Sequence[ClientUpdate]
    ) -> str | None:
        """Why this algorithm cannot use a valid ``update`` (None: it can; default: always).

        Called for every update that passed the common rules, with all of this attempt's valid
        updates in aggregation order; a reason refuses the update like any bad reply.
        """
        return None

    def instruction(self, server_round: int) -> dict[str, ConfigValue]:
        """What the node does with the global adapter (client/model/node_mode.py): merge it and
        train a fresh LoRA, unless a strategy says otherwise."""
        return {p.NODE_MODE: p.MERGE}

    def node_record(self, node_id: int, record: ArrayRecord) -> ArrayRecord:
        """The global adapter as sent to ``node_id`` for training (default: the same to all)."""
        return record

    @property
    def global_rank(self) -> int:
        """The largest rank of the global adapter's modules (0 before round 1)."""
        return max((a.shape[0] for a, _ in self._global.values()), default=0)

    # -- Flower hooks ---------------------------------------------------------------------------
    def report(self, server_round: int) -> RoundReport:
        return self.rounds.setdefault(server_round, RoundReport(round=server_round))

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self._sync_global(arrays)
        self._grid, self._train_config = grid, config
        return self._train_messages(server_round + self.round_offset, attempt=0)

    def _train_messages(self, server_round: int, *, attempt: int) -> list[Message]:
        """Sample this attempt's nodes (seeded by run seed, round, attempt) and instruct them."""
        assert self._grid is not None, "configure_train sets the grid"
        nodes = wait_for_nodes(
            self._grid, min_nodes=self.federation.min_nodes, timeout_s=self.federation.node_wait_s
        )
        chosen = sample_nodes(
            nodes,
            fraction=self.federation.fraction_train,
            minimum=self.federation.min_nodes,
            seed=self.federation.seed * 100_003 + server_round + 7_919 * attempt,
        )
        expected = self.expected_modules()  # named by digest: a node with these sends no names
        digest = {p.MODULES_DIGEST: module_digest(expected)} if expected else {}
        report = self.report(server_round)
        report.available = len(nodes)
        report.sampled.update(chosen)
        config = ConfigRecord(
            {
                **self._train_config,
                "server-round": server_round,
                p.GLOBAL_FINGERPRINT: self.global_fingerprint(server_round),
                **digest,
                **self.instruction(server_round),
            }
        )
        self._sent = self._messages(server_round, "train", chosen, config)
        return self._sent

    def global_fingerprint(self, server_round: int) -> str:
        """Fingerprint of the global adapter as sent in ``server_round`` (cached per round)."""
        if self._fingerprint[0] != server_round:
            wire = p.from_record(self._wire_record())
            self._fingerprint = (
                server_round,
                fingerprint(wire, salt=self.salt, server_round=server_round),
            )
        return self._fingerprint[1]

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self._sync_global(arrays)
        nodes = wait_for_nodes(
            grid, min_nodes=self.federation.min_nodes, timeout_s=self.federation.node_wait_s
        )
        server_round += self.round_offset
        chosen = sample_nodes(
            nodes,
            fraction=self.federation.fraction_evaluate,
            minimum=1,
            seed=f"fedlora-evaluate|{self.federation.seed}|{server_round}",
        )
        if server_round == 0:  # an evaluation-only round: its sample is the whole round
            self.report(server_round).available = len(nodes)
        config = ConfigRecord({**config, "server-round": server_round})
        self._sent_eval = self._messages(server_round, "evaluate", chosen, config)
        return self._sent_eval

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Validate, retry a short round up to ``max-round-retries`` times, aggregate.

        Raises :class:`RoundFailedError` when the round still has fewer than ``min-replies``
        valid replies: the caller stops the run with the last completed round's state.
        """
        server_round += self.round_offset
        parsed = self._parse_round(server_round, replies)
        for attempt in range(1, self.policy.max_round_retries + 1):
            if len(parsed.updates) >= self.policy.min_replies:
                break
            log(WARNING, "round %d: %d valid replies, `min-replies` is %d: retry %d of %d",
                server_round, len(parsed.updates), self.policy.min_replies, attempt,
                self.policy.max_round_retries)  # fmt: skip
            self.report(server_round).extra["retries"] = attempt
            assert self._grid is not None, "configure_train sets the grid"
            messages = self._train_messages(server_round, attempt=attempt)
            replies = self._grid.send_and_receive(messages, timeout=self.policy.round_timeout_s)
            parsed = self._parse_round(server_round, replies)
        if len(parsed.updates) < self.policy.min_replies:
            raise RoundFailedError(
                server_round,
                f"{len(parsed.updates)} valid replies after {self.policy.max_round_retries} "
                f"retries, `min-replies` is {self.policy.min_replies}; see the refusals in "
                "metrics.jsonl, fix or start the nodes, then resume the run",
            )
        return self._aggregate_updates(server_round, parsed.updates)

    def _parse_round(self, server_round: int, replies: Iterable[Message]) -> Parsed:
        """Screen and validate one attempt's replies; record every refusal and every update.

        Accepted updates are labelled first, in aggregation order, so a name two nodes claim
        stays with a node whose reply is used.
        """
        report = self.report(server_round)
        kept, refused = screen_replies(
            list(replies), self._sent, timeout_s=self.policy.round_timeout_s
        )
        expect = Expectation(
            limits=self.limits,
            modules=self.expected_modules(),
            fingerprint=self.global_fingerprint(server_round),
            enrolled=self.enrolled,
        )
        valid = parse_train_replies(kept, expect)
        updates, screened = screen_updates(
            valid.updates, self.screen_update, max_norm_ratio=self.limits.max_norm_ratio
        )
        parsed = Parsed(updates, [*refused, *valid.rejected, *screened])
        for update in parsed.updates:
            entry = report.node(update.node_id, self._label(update.node_id, update.name))
            entry.rank, entry.num_examples = update.rank, update.num_examples
            entry.train_loss, entry.bytes_up = update.metrics.get(p.TRAIN_LOSS), update.bytes_up
            entry.rejected = None
            self.node_ranks[update.node_id] = update.rank
        for bad in parsed.rejected:
            entry = report.node(bad.node_id, self._label(bad.node_id, bad.name))
            entry.rejected = bad.reason
            log(INFO, "round %d: reply from %s not used: %s", server_round, entry.name,
                bad.reason)  # fmt: skip
        record_privacy(report, kept, self._label)  # ε is spent whether or not a reply is used
        record_setup(report, kept, self._label)
        return parsed

    def expected_modules(self) -> Shapes:
        """The announced module set, else the global adapter's (empty before round 1)."""
        if self.modules is not None:
            return self.modules
        return {m: (b.shape[0], a.shape[1]) for m, (a, b) in self._global.items()}

    def _aggregate_updates(
        self, server_round: int, updates: Sequence[ClientUpdate]
    ) -> tuple[ArrayRecord, MetricRecord]:
        report = self.report(server_round)
        updates = sorted(updates, key=aggregation_order)  # replies arrive in any order
        self._global = self.aggregate(server_round, updates, self._global)
        report.aggregated = True
        report.global_rank = self.global_rank
        total = sum(u.num_examples for u in updates)
        loss = sum(u.num_examples * u.metrics.get(p.TRAIN_LOSS, math.nan) for u in updates) / total
        arrays = p.to_record(join_factor_keys(self._global), dtype=np.float64)
        self._source, self._wire = arrays, None
        return arrays, MetricRecord({p.TRAIN_LOSS: loss, p.NUM_EXAMPLES: total})

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        server_round += self.round_offset
        report = self.report(server_round)
        results = []
        for msg in replies:
            result = parse_eval_reply(msg, self.limits, self.enrolled)
            node = addressee(msg, self._sent_eval)  # the SuperLink's errors name no node
            entry = report.node(node, self._label(node, result.name))
            if isinstance(result, Rejected):
                entry.rejected = result.reason
                log(INFO, "round %d: evaluation from %s not used: %s", server_round, entry.name,
                    result.reason)  # fmt: skip
            else:
                entry.eval_loss = result.loss
                results.append(result)
        if not results:
            return None
        total = sum(r.num_examples for r in results)
        loss = sum(r.loss * r.num_examples for r in results) / total
        return MetricRecord({p.EVAL_LOSS: loss, p.NUM_EXAMPLES: total})

    def summary(self) -> None:
        log(
            INFO,
            "\t├── %s: min-nodes=%d fraction-train=%.2f fraction-evaluate=%.2f",
            type(self).__name__,
            self.federation.min_nodes,
            self.federation.fraction_train,
            self.federation.fraction_evaluate,
        )

    # -- checkpoint -----------------------------------------------------------------------------
    def global_arrays(self) -> dict[str, NDArray[np.floating]]:
        """The global adapter alone (float64, peft key names): what the run exports."""
        return join_factor_keys(self._global)

    def state_dict(self) -> tuple[dict[str, NDArray[np.floating]], dict[str, Any]]:
        """The checkpoint: the global adapter plus any arrays the strategy keeps (FLoRA's server
        momentum), and the small state a resume needs.

        Node sampling needs no saved RNG state: it is seeded by (seed, round, attempt) alone.
        """
        state = {"salt": self.salt, "names": self._labels.state()}
        return self.global_arrays(), state

    def load_state_dict(
        self,
        arrays: dict[str, NDArray[np.floating]],
        state: dict[str, Any],
        *,
        completed_round: int,
    ) -> ArrayRecord:
        """Adopt a checkpoint; returns the record to pass to ``start()`` as its initial arrays."""
        record = p.to_record(arrays, dtype=np.float64)
        self._global = read_global(record)
        self._source, self._wire = record, None
        self.salt = str(state["salt"])
        self._labels.restore(dict(state["names"]))
        self.round_offset = completed_round
        return record

    # -- helpers --------------------------------------------------------------------------------
    def _label(self, node_id: int, name: str) -> str:
        """A node's label (``strategies/flower/labels.py``): in deployment the name it was
        enrolled as, whatever its reply says; in simulation the name it reports."""
        if self.enrolled is not None:
            name = self.enrolled(node_id) or ""
        return self._labels.label(node_id, name)

    def _sync_global(self, arrays: ArrayRecord) -> None:
        """Adopt ``arrays`` as the global adapter unless it is the record we already hold."""
        if arrays is not self._source:
            self._global = read_global(arrays)
            self._source, self._wire = arrays, None

    def _wire_record(self) -> ArrayRecord:
        if self._wire is None:
            self._wire = p.to_record(join_factor_keys(self._global))
        return self._wire

    def _messages(
        self, server_round: int, kind: str, nodes: Sequence[int], config: ConfigRecord
    ) -> list[Message]:
        record = self._wire_record()
        size = record.count_bytes()
        report = self.report(server_round)
        messages = []
        for node_id in nodes:
            arrays = record
            if kind == "train":
                arrays = self.node_record(node_id, record)
                sent = size if arrays is record else arrays.count_bytes()
                report.node(node_id).bytes_down += sent
            content = RecordDict({p.ARRAYS: arrays, p.CONFIG: config})
            messages.append(
                Message(
                    content=content,
                    message_type=kind,
                    dst_node_id=node_id,
                    group_id=str(server_round),
                )
            )
        return messages

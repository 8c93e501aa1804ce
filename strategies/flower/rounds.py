"""Round-level rules: waiting for nodes, which replies belong to this round, and when a round
has failed.

A reply counts only if it answers an instruction the server sent in this round (this attempt),
and a node gets one reply per round; a reply whose config records exceed their cap
(strategies/protocol.py) is refused here, before any of them is read. What Flower's
``Grid.send_and_receive(timeout=...)`` does with stragglers: it pulls until every instruction
has a reply or the timeout passes, then returns what it has; replies that arrive later are
never pulled, so they are dropped by construction. This module records each instruction left
without a reply.
"""

from __future__ import annotations

import math
import random
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from flwr.app import Message
from flwr.serverapp import Grid

from common.config import SettingsError
from strategies.flower.replies import Rejected, config_size_problem


@dataclass(frozen=True)
class RoundPolicy:
    """How many valid replies make a round, how often a short round is retried, how long to wait."""

    min_replies: int = 1
    max_round_retries: int = 2
    round_timeout_s: float = 900.0

    def __post_init__(self) -> None:
        problems = []
        if self.min_replies < 1:
            problems.append(f"`min-replies` is {self.min_replies}: use an integer >= 1")
        if self.max_round_retries < 0:
            problems.append(f"`max-round-retries` is {self.max_round_retries}: use an integer >= 0")
        if not self.round_timeout_s > 0:
            problems.append(f"`round-timeout-s` is {self.round_timeout_s}: use seconds > 0")
        if problems:
            raise SettingsError(problems)


class NotEnoughNodesError(RuntimeError):
    """Fewer nodes connected than ``min-nodes`` within ``node-wait-s``."""


def wait_for_nodes(
    grid: Grid, *, min_nodes: int, timeout_s: float, poll_s: float = 0.5
) -> list[int]:
    """Node ids once at least ``min_nodes`` are connected; raise after ``timeout_s`` seconds."""
    deadline = time.monotonic() + timeout_s
    while True:
        ids = sorted(grid.get_node_ids())
        if len(ids) >= min_nodes:
            return ids
        if time.monotonic() >= deadline:
            raise NotEnoughNodesError(
                f"{len(ids)} node(s) connected after {timeout_s:.0f} s but `min-nodes` is "
                f"{min_nodes}: start more nodes, raise `node-wait-s`, or lower `min-nodes`"
            )
        time.sleep(poll_s)


def sample_nodes(
    nodes: Sequence[int], *, fraction: float, minimum: int, seed: int | str
) -> list[int]:
    """A seeded sample of ``nodes``: ``ceil(fraction * len(nodes))`` of them, at least
    ``minimum`` and at most all, sorted; the same ``seed`` gives the same sample.

    ``fraction * len(nodes)`` is rounded to 9 decimals first, so 0.07 of 100 nodes is 7 (the
    float product is 7.000000000000001).
    """
    count = min(len(nodes), max(minimum, math.ceil(round(fraction * len(nodes), 9))))
    if count == len(nodes):
        return sorted(nodes)
    return sorted(random.Random(seed).sample(list(nodes), count))


class RoundFailedError(RuntimeError):
    """A round kept fewer valid replies than ``min-replies`` after every retry."""

    def __init__(self, server_round: int, reason: str) -> None:
        super().__init__(f"round {server_round} failed: {reason}")
        self.server_round = server_round
        self.reason = reason


def screen_replies(
    replies: Sequence[Message], sent: Sequence[Message], *, timeout_s: float
) -> tuple[list[Message], list[Rejected]]:
    """Split ``replies`` into those that answer ``sent`` (one per node) and refusals.

    Instructions are matched by message id where the grid assigned one (Flower's grids do, in
    place, when pushing), else by destination node and group id. Every instruction without a
    reply becomes a refusal "no reply within `round-timeout-s`".
    """
    by_id = {m.metadata.message_id: m for m in sent if m.metadata.message_id}
    groups = {(m.metadata.dst_node_id, m.metadata.group_id) for m in sent}
    counts = Counter(_sender(r, by_id) for r in replies)
    kept, refused = [], []
    for reply in replies:
        node, meta = _sender(reply, by_id), reply.metadata
        if by_id:
            instruction = by_id.get(meta.reply_to_message_id)
            answered = instruction is not None and instruction.metadata.dst_node_id == node
        else:
            answered = (node, meta.group_id) in groups and meta.message_type == "train"
        if not answered:
            reason = "not an answer to an instruction sent in this round (stale or unsolicited)"
            refused.append(Rejected(node, "", reason))
        elif counts[node] > 1:
            reason = f"{counts[node]} replies from this node in one round; at most one is allowed"
            refused.append(Rejected(node, "", reason))
        elif meta.src_node_id != node:  # the SuperLink's own error reply, e.g. node unavailable
            refused.append(Rejected(node, "", f"{reply.error.reason} (error {reply.error.code})"))
        elif reply.has_content() and (oversized := config_size_problem(reply)) is not None:
            refused.append(oversized)  # nothing in it is read, its privacy figures included
        else:
            kept.append(reply)
    silent = sorted({m.metadata.dst_node_id for m in sent} - set(counts))
    refused += [
        Rejected(node, "", f"no reply within `round-timeout-s` = {timeout_s:g} s; dropped")
        for node in silent
    ]
    return kept, refused


def addressee(reply: Message, sent: Sequence[Message]) -> int:
    """The node a reply is charged to (see :func:`_sender`)."""
    return _sender(reply, {m.metadata.message_id: m for m in sent if m.metadata.message_id})


def _sender(reply: Message, by_id: dict[str, Message]) -> int:
    """The node a reply is from; the grid's own error replies are charged to the addressee."""
    instruction = by_id.get(reply.metadata.reply_to_message_id)
    if reply.has_error() and instruction is not None:
        return instruction.metadata.dst_node_id
    return reply.metadata.src_node_id

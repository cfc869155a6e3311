"""Read-only views of a shard for people: what runs an agent has and which steps each completed.

Every view reads through ``read_shard``: a read-only connection that creates and changes no file.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field
from pathlib import Path

import apsw

from .._base.config import ShardConfig
from .._base.errors import AgentShardsError
from .._core.journal import Attempt, Journal, Run, StepRecord
from .._core.ledger import Spend
from .._core.shard import read_shard, shard_ids


@dataclass(frozen=True)
class RunReport:
    """A run, its completed steps, every LLM attempt, and the attempts still in flight (sent, unrecorded)."""

    run: Run
    steps: list[StepRecord]
    attempts: list[Attempt]
    in_flight: list[Attempt]
    spend: Spend


@dataclass(frozen=True)
class AgentReport:
    agent_id: str
    path: Path
    runs: list[RunReport]


def inspect_agent(data_dir: str | os.PathLike[str], agent_id: str) -> AgentReport:
    """Every run of ``agent_id`` with its completed steps, oldest first. Raises ShardError if absent."""
    def report(conn: apsw.Connection) -> list[RunReport]:
        journal = Journal(conn, agent_id)
        return [RunReport(run, journal.steps(run.id), journal.attempts(run.id), journal.in_flight(run.id),
                          journal.spend(run.id)) for run in journal.runs()]

    runs = read_shard(Path(data_dir), agent_id, ShardConfig(), report)
    return AgentReport(agent_id, Path(data_dir) / f"{agent_id}.db", runs)


@dataclass(frozen=True)
class SpendReport:
    """LLM money per agent and for the whole data dir (see Spend for the fields)."""

    agents: dict[str, Spend]
    total: Spend
    errors: dict[str, str] = field(default_factory=dict)
    """Agents whose shard could not be read (the others are still counted), each with why."""


def spend_report(data_dir: str | os.PathLike[str], agent_id: str | None = None) -> SpendReport:
    """Spend, calls, savings by replay and in-flight estimates for one agent or every agent in ``data_dir``."""
    if agent_id is not None:
        spend = read_shard(Path(data_dir), agent_id, ShardConfig(), functools.partial(_spend, agent_id))
        return SpendReport({agent_id: spend}, _total([spend]))
    agents: dict[str, Spend] = {}
    errors: dict[str, str] = {}
    for one in shard_ids(data_dir):
        try:
            agents[one] = read_shard(Path(data_dir), one, ShardConfig(), functools.partial(_spend, one))
        except AgentShardsError as exc:  # one unreadable file is reported; the rest still count
            errors[one] = str(exc)
    return SpendReport(agents, _total(list(agents.values())), errors)


def _spend(agent_id: str, conn: apsw.Connection) -> Spend:
    return Journal(conn, agent_id).spend()


def _total(spends: list[Spend]) -> Spend:
    estimates = [s.unrecorded_estimate_usd for s in spends if s.unrecorded_estimate_usd is not None]
    return Spend(
        spent_usd=round(sum(s.spent_usd for s in spends), 10), calls=sum(s.calls for s in spends),
        unpriced_calls=sum(s.unpriced_calls for s in spends), saved_usd=round(sum(s.saved_usd for s in spends), 10),
        replayed_calls=sum(s.replayed_calls for s in spends), in_flight_calls=sum(s.in_flight_calls for s in spends),
        unrecorded_estimate_usd=round(sum(estimates), 10) if estimates else None,
        input_tokens=sum(s.input_tokens for s in spends), output_tokens=sum(s.output_tokens for s in spends))

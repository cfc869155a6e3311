"""Read-only views of a shard for people: what runs an agent has and which steps each completed."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ._config import ShardConfig
from ._journal import Attempt, Journal, Run, StepRecord
from ._shard import open_shard


@dataclass(frozen=True)
class RunReport:
    """A run, its completed steps, every LLM attempt, and the attempts still in flight (sent, unrecorded)."""

    run: Run
    steps: list[StepRecord]
    attempts: list[Attempt]
    in_flight: list[Attempt]


@dataclass(frozen=True)
class AgentReport:
    agent_id: str
    path: Path
    runs: list[RunReport]


def inspect_agent(data_dir: str | os.PathLike[str], agent_id: str) -> AgentReport:
    """Every run of ``agent_id`` with its completed steps, oldest first. Raises ShardError if absent."""
    conn = open_shard(Path(data_dir), agent_id, ShardConfig(), create=False)
    journal = Journal(conn, agent_id)
    try:
        runs = [RunReport(run, journal.steps(run.id), journal.attempts(run.id), journal.in_flight(run.id))
                for run in journal.runs()]
    finally:
        journal.close()
    return AgentReport(agent_id, Path(data_dir) / f"{agent_id}.db", runs)

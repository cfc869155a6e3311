"""Read-only views of a shard for people: what runs an agent has and which steps each completed.

Every view reads through ``read_shard``: a read-only connection that creates and changes no file.
"""

from __future__ import annotations

import functools
import json
import os
from dataclasses import dataclass
from pathlib import Path

import apsw

from .._base.config import ShardConfig
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


def spend_report(data_dir: str | os.PathLike[str], agent_id: str | None = None) -> SpendReport:
    """Spend, calls, savings by replay and in-flight estimates for one agent or every agent in ``data_dir``."""
    ids = [agent_id] if agent_id is not None else shard_ids(data_dir)
    agents: dict[str, Spend] = {}
    for one in ids:
        agents[one] = read_shard(Path(data_dir), one, ShardConfig(), functools.partial(_spend, one))
    return SpendReport(agents, _total(list(agents.values())))


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


@dataclass(frozen=True)
class AgentStatus:
    """One agent of a data dir: the supervisor's live view (if one published it) joined with its shard."""

    agent_id: str
    status: str
    steps: int
    llm_calls: int
    input_tokens: int
    output_tokens: int
    cost_usd: float
    restarts: int
    reason: str | None


def _summary(agent_id: str, conn: apsw.Connection) -> tuple[list[Run], Spend, int]:
    """The latest run's step count, every run and the spend: what a status line shows."""
    journal = Journal(conn, agent_id)
    runs = journal.runs()
    return runs, journal.spend(), len(journal.steps(runs[-1].id)) if runs else 0


def data_dir_status(data_dir: str | os.PathLike[str]) -> list[AgentStatus]:
    """Every agent in ``data_dir``: live state from ``.fleet/status.json`` when a supervisor wrote one,
    else the state of its latest run, plus steps, LLM calls, tokens and cost from its shard."""
    live: dict[str, dict[str, object]] = {}
    status_file = Path(data_dir) / ".fleet" / "status.json"
    if status_file.exists():
        live = json.loads(status_file.read_text()).get("agents", {})
    ids = sorted(set(shard_ids(data_dir)) | set(live))
    out = []
    for agent_id in ids:
        runs, spend, steps = read_shard(Path(data_dir), agent_id, ShardConfig(),
                                        functools.partial(_summary, agent_id))
        state = live.get(agent_id, {})
        out.append(AgentStatus(
            agent_id=agent_id, status=str(state.get("status") or (runs[-1].status if runs else "pending")),
            steps=steps, llm_calls=spend.calls, input_tokens=spend.input_tokens, output_tokens=spend.output_tokens,
            cost_usd=spend.spent_usd, restarts=int(str(state.get("restarts", 0))),
            reason=None if state.get("reason") is None else str(state.get("reason"))))
    return out

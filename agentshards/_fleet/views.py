"""Read-only summaries of a data dir's agents, shaped for a screen: a row per agent and one agent's timeline.

Everything here opens shards read-only and writes nothing, so a page that refreshes every second beside a
running fleet changes no file. The supervisor's live view (``.fleet/status.json``) is used only while the
process that wrote it still holds the data dir's lock: a file left by a stopped fleet says nothing.
"""

from __future__ import annotations

import fcntl
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import apsw

from .._base.config import ShardConfig
from .._base.errors import ShardError
from .._core.journal import Journal
from .._core.shard import SHARD_SUFFIX, shard_path, validate_agent_id
from .._core.sqlite import open_connection

LOCK_NAME = "agentshards.lock"
STATUS_FILE = Path(".fleet") / "status.json"


@dataclass(frozen=True)
class AgentSummary:
    agent_id: str
    status: str
    run_id: str | None
    steps: int
    llm_calls: int
    spent_usd: float
    saved_usd: float
    restarts: int
    reason: str | None
    started_at: float | None
    finished_at: float | None
    last_step_at: float | None
    ledger: list[tuple[float, str, float]]
    """(recorded_at, 'call' | 'replay', USD): for spend and savings over time."""


@dataclass(frozen=True)
class LiveState:
    status: str
    restarts: int
    reason: str | None


def shard_ids(data_dir: Path) -> list[str]:
    """Agent ids with a shard in ``data_dir``; names that are not valid agent ids (temp files) are skipped."""
    ids = []
    for path in data_dir.glob(f"*{SHARD_SUFFIX}"):
        agent_id = path.name[: -len(SHARD_SUFFIX)]
        try:
            validate_agent_id(agent_id)
        except ValueError:
            continue
        ids.append(agent_id)
    return sorted(ids)


def _journal(data_dir: Path, agent_id: str) -> Journal:
    path = shard_path(data_dir, validate_agent_id(agent_id))
    if not path.exists():
        raise ShardError(f"no shard at {path}", agent_id=agent_id, hint="check the data dir and the agent id")
    try:
        return Journal(open_connection(path, ShardConfig(), readonly=True), agent_id)
    except apsw.Error as exc:
        raise ShardError(f"cannot read {path}: {exc}", agent_id=agent_id,
                         hint="inspect the file with `agentshards inspect`") from exc


def agent_summary(data_dir: Path, agent_id: str) -> AgentSummary:
    journal = _journal(data_dir, agent_id)
    try:
        runs = journal.runs()
        run = runs[-1] if runs else None
        steps = journal.steps(run.id) if run else []
        spend = journal.spend()
        ledger = journal.ledger_events()
    except apsw.Error as exc:
        raise ShardError(f"cannot read its shard: {exc}", agent_id=agent_id,
                         hint="inspect the file with `agentshards inspect`") from exc
    finally:
        journal.close()
    reason = None
    if run is not None and run.error_json:
        error = json.loads(run.error_json)
        reason = f"{error.get('type', '?')}: {str(error.get('message', ''))[:200]}"
    return AgentSummary(
        agent_id=agent_id, status=run.status if run else "pending", run_id=run.id if run else None,
        steps=len(steps), llm_calls=spend.calls, spent_usd=spend.spent_usd, saved_usd=spend.saved_usd, restarts=0,
        reason=reason, started_at=run.created_at if run else None, finished_at=run.finished_at if run else None,
        last_step_at=steps[-1].completed_at if steps else None, ledger=ledger)


def agent_timeline(data_dir: Path, agent_id: str) -> dict[str, Any]:
    """The latest run's steps in order, each with when it started (its first LLM attempt, else the end of
    the step before) and when it completed, plus the LLM attempts still in flight."""
    journal = _journal(data_dir, agent_id)
    try:
        runs = journal.runs()
        if not runs:
            return {"agent_id": agent_id, "run": None, "steps": [], "in_flight": []}
        run = runs[-1]
        steps, attempts, in_flight = journal.steps(run.id), journal.attempts(run.id), journal.in_flight(run.id)
    finally:
        journal.close()
    first_attempt: dict[str, float] = {}
    for attempt in attempts:
        first_attempt.setdefault(attempt.step_name, attempt.started_at)
    out, previous_end = [], run.created_at
    for step in steps:
        start = min(first_attempt.get(step.name, previous_end), step.completed_at)
        out.append({"name": step.name, "kind": step.kind, "outcome": step.outcome, "started_at": start,
                    "completed_at": step.completed_at, "replicated": step.replicated_at is not None,
                    "preview": (step.input_preview or "")[:200]})
        previous_end = step.completed_at
    return {"agent_id": agent_id, "run": {"id": run.id, "status": run.status, "created_at": run.created_at,
                                          "finished_at": run.finished_at},
            "steps": out, "in_flight": [{"name": a.step_name, "attempt": a.attempt, "started_at": a.started_at}
                                        for a in in_flight]}


def live_states(data_dir: Path) -> dict[str, LiveState]:
    """The supervisor's view, only while its writer still holds the data dir's lock (else: empty)."""
    status_file = data_dir / STATUS_FILE
    if not status_file.exists() or not _lock_held(data_dir):
        return {}
    try:
        payload = json.loads(status_file.read_text())
    except (OSError, ValueError):
        return {}
    agents = payload.get("agents", {}) if isinstance(payload, dict) else {}
    return {agent_id: LiveState(str(state.get("status", "?")), int(state.get("restarts", 0) or 0),
                                None if state.get("reason") is None else str(state.get("reason")))
            for agent_id, state in agents.items() if isinstance(state, dict)}


def _lock_held(data_dir: Path) -> bool:
    """True while some process holds the data dir's lock: probed with a shared lock, never written."""
    try:
        fd = os.open(data_dir / LOCK_NAME, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)

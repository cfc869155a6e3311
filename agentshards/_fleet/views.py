"""Read-only summaries of a data dir's agents, shaped for a screen: a row per agent and one agent's timeline.

Everything here opens shards read-only and writes nothing, so a page that refreshes every second beside a
running fleet changes no file. The supervisor's live view (``.fleet/status.json``) is used only while the
process that wrote it still holds the data dir's lock: a file left by a stopped fleet says nothing.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, TypeVar

from .._base.config import ShardConfig
from .._base.errors import AgentShardsError
from .._core.journal import Journal
from .._core.locks import owner_pid
from .._core.shard import read_shard, shard_ids, validate_agent_id

T = TypeVar("T")

SERIES_POINTS = 120
"""Points in the spend-over-time chart: enough to show a shape, few enough to draw at once."""

STATUS_FILE = Path(".fleet") / "status.json"
REPLICATION_FILE = Path(".fleet") / "replication.json"


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
    lag_s: float | None = None
    """Local writes not yet in the replica for this long (the fleet's watchdog's last look); None: unknown."""


def _read(data_dir: Path, agent_id: str, read: Callable[[Journal], T]) -> T:
    """``read(journal)`` on the shard opened read-only, leaving no trace (``read_shard``)."""
    return read_shard(data_dir, validate_agent_id(agent_id), ShardConfig(), lambda conn: read(Journal(conn, agent_id)))


def agent_summary(data_dir: Path, agent_id: str) -> AgentSummary:
    def read(journal: Journal) -> tuple[Any, ...]:
        runs = journal.runs()
        run = runs[-1] if runs else None
        return run, (journal.steps(run.id) if run else []), journal.spend(), journal.ledger_events()

    run, steps, spend, ledger = _read(data_dir, agent_id, read)
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
    def read(journal: Journal) -> tuple[Any, ...]:
        runs = journal.runs()
        if not runs:
            return None, [], [], []
        run = runs[-1]
        return run, journal.steps(run.id), journal.attempts(run.id), journal.in_flight(run.id)

    run, steps, attempts, in_flight = _read(data_dir, agent_id, read)
    if run is None:
        return {"agent_id": agent_id, "run": None, "steps": [], "in_flight": []}
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
    """The supervisor's view (state, restarts, replication lag), only while its writer still holds the data
    dir's lock: a file a stopped fleet left behind says nothing."""
    if not (data_dir / STATUS_FILE).exists():
        return {}
    owner = owner_pid(data_dir)
    if owner is None:
        return {}
    # only what the owner itself wrote: a stopped fleet's files mean nothing while run_agent owns the dir
    agents = _json_agents(data_dir / STATUS_FILE, owner)
    lags = _json_agents(data_dir / REPLICATION_FILE, owner)
    out = {}
    for agent_id, state in agents.items():
        lag = lags.get(agent_id, {}).get("lag_s")
        out[agent_id] = LiveState(str(state.get("status", "?")), int(state.get("restarts", 0) or 0),
                                  None if state.get("reason") is None else str(state.get("reason")),
                                  None if lag is None else float(lag))
    return out


def _json_agents(path: Path, pid: int) -> dict[str, dict[str, Any]]:
    try:
        payload = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(payload, dict) or payload.get("pid") != pid:
        return {}
    agents = payload.get("agents", {})
    return {k: v for k, v in agents.items() if isinstance(v, dict)} if isinstance(agents, dict) else {}


_ROW_FIELDS = tuple(f.name for f in fields(AgentSummary) if f.name != "ledger")


@dataclass
class _Cached:
    signature: tuple[int, ...]
    summary: AgentSummary | None
    error: str | None


class FleetView:
    """The data dir as the page sees it: per-agent summaries, cached by file signature, plus live state."""

    def __init__(self, data_dir: Path, *, threads: int = 8) -> None:
        self.data_dir = data_dir
        self._cache: dict[str, _Cached] = {}
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="dashboard")

    def close(self) -> None:
        self._pool.shutdown(wait=True)

    def snapshot(self) -> dict[str, Any]:
        """Every agent's row, counts by state, totals, and cumulative spend/saved over time."""
        ids = shard_ids(self.data_dir)
        stale = [i for i in ids if self._is_stale(i)]
        for agent_id, cached in zip(stale, self._pool.map(self._read, stale), strict=True):
            with self._lock:
                self._cache[agent_id] = cached
        with self._lock:
            for gone in set(self._cache) - set(ids):
                del self._cache[gone]
            cached_now = {i: self._cache[i] for i in ids}
        live = live_states(self.data_dir)
        agents: list[dict[str, Any]] = []
        errors: list[dict[str, str | None]] = []
        states: dict[str, int] = {}
        for agent_id in ids:
            entry = cached_now[agent_id]
            if entry.summary is None:
                errors.append({"agent_id": agent_id, "error": entry.error})
                continue
            row = {name: getattr(entry.summary, name) for name in _ROW_FIELDS}
            state = live.get(agent_id)
            row["lag_s"] = None
            if state is not None:
                row.update(status=state.status, restarts=state.restarts, reason=state.reason or row["reason"],
                           lag_s=state.lag_s)
            states[row["status"]] = states.get(row["status"], 0) + 1
            agents.append(row)
        return {"data_dir": str(self.data_dir), "generated_at": time.time(), "agents": agents, "errors": errors,
                "states": states, "totals": _totals(agents), "series": self._series(ids, cached_now)}

    def _is_stale(self, agent_id: str) -> bool:
        with self._lock:
            cached = self._cache.get(agent_id)
        return cached is None or cached.signature != self._signature(agent_id)

    def _signature(self, agent_id: str) -> tuple[int, ...]:
        parts: list[int] = []
        base = os.path.join(self.data_dir, agent_id)
        for suffix in (".db", ".db-wal"):
            try:
                st = os.stat(base + suffix)
                parts += [st.st_size, st.st_mtime_ns]
            except FileNotFoundError:
                parts += [-1, -1]
        return tuple(parts)

    def _read(self, agent_id: str) -> _Cached:
        signature = self._signature(agent_id)  # taken before the read: a write during it marks it stale again
        try:
            return _Cached(signature, agent_summary(self.data_dir, agent_id), None)
        except AgentShardsError as exc:
            return _Cached(signature, None, str(exc))
        except Exception as exc:  # a file nobody expected (bad JSON in a row...): its own row, not the page's end
            return _Cached(signature, None, f"cannot read its shard: {type(exc).__name__}: {exc}")

    def _series(self, ids: list[str], cached: dict[str, _Cached]) -> list[dict[str, float]]:
        events = sorted(e for i in ids if (s := cached[i].summary) is not None for e in s.ledger)
        if not events:
            return []
        start, end = events[0][0], events[-1][0]
        step = max((end - start) / (SERIES_POINTS - 1), 1e-9)
        points: list[dict[str, float]] = []
        spent = saved = 0.0
        bucket = 0
        for at, event, cost in events:
            index = int((at - start) / step)
            while bucket < index:
                points.append({"t": start + bucket * step, "spent": spent, "saved": saved})
                bucket += 1
            if event == "call":
                spent += cost
            else:
                saved += cost
        points.append({"t": end, "spent": spent, "saved": saved})
        return [{k: round(v, 10) for k, v in p.items()} for p in points]


def _totals(agents: list[dict[str, Any]]) -> dict[str, float | int | None]:
    lags = [a["lag_s"] for a in agents if a.get("lag_s") is not None]
    return {"agents": len(agents), "spent_usd": round(sum(a["spent_usd"] for a in agents), 10),
            "saved_usd": round(sum(a["saved_usd"] for a in agents), 10),
            "llm_calls": sum(a["llm_calls"] for a in agents), "restarts": sum(a["restarts"] for a in agents),
            "lag_max_s": max(lags) if lags else None}

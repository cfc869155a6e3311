"""Fleet-wide SQL: one read-only query over every shard of a data dir, rows merged with an agent_id.

Read-only for real, not by convention: each shard is opened read-only with ``query_only`` (through
``read_shard``, so no file is created or changed), and an authorizer allows only reads (SELECT, reading
columns, calling functions), so writes, PRAGMA changes, ATTACH and DETACH are refused by SQLite itself.
``reduce`` runs a second query over the merged rows (an in-memory table ``rows``), for fleet totals such
as spend by model. A progress handler stops a query at its deadline (an endless recursive CTE) and lets
Ctrl-C through: SQLite runs a statement in C, where Python's signal handler would otherwise never run.
"""

from __future__ import annotations

import functools
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import apsw

from .._base.config import ShardConfig
from .._base.errors import InvalidInputs
from .._core.shard import read_shard, shard_ids, validate_agent_id

_ALLOWED = {apsw.SQLITE_SELECT, apsw.SQLITE_READ, apsw.SQLITE_FUNCTION, apsw.SQLITE_RECURSIVE}

DEFAULT_QUERY_TIMEOUT_S = 30.0
"""The CLI's ``--timeout``: long enough for a fleet-wide scan, short enough that a runaway query ends."""

PROGRESS_STEPS = 10_000
"""SQLite virtual-machine instructions between deadline checks: well under a millisecond of work, so a
stop is prompt, and the Python call it costs is lost in the instructions it follows."""


@dataclass(frozen=True)
class QueryResult:
    columns: list[str]
    rows: list[tuple[Any, ...]]


def _read_only(op: int, p1: str | None, p2: str | None, db: str | None, trigger: str | None) -> int:
    return apsw.SQLITE_OK if op in _ALLOWED else apsw.SQLITE_DENY


class _Deadline:
    """SQLite's progress handler: True stops the statement (SQLITE_INTERRUPT) once the deadline passed.

    Being Python, each call also gives a pending Ctrl-C its chance: the KeyboardInterrupt Python raises
    here stops the statement, and apsw passes it on to the caller as it is.
    """

    __slots__ = ("at", "timeout_s")

    def __init__(self, timeout_s: float | None) -> None:
        self.timeout_s = timeout_s
        self.at = None if timeout_s is None else time.monotonic() + timeout_s

    def passed(self) -> bool:
        return self.at is not None and time.monotonic() > self.at

    def __call__(self) -> bool:
        return self.passed()

    def timed_out(self, where: str) -> InvalidInputs:
        return InvalidInputs(f"{where}: the query ran past its {self.timeout_s:g} s timeout and was stopped",
                             hint="bound recursive CTEs (LIMIT, or a WHERE on the counter), or raise --timeout")


def _run(conn: apsw.Connection, sql: str, where: str, deadline: _Deadline) -> QueryResult:
    if deadline.passed():
        raise deadline.timed_out(where)
    conn.authorizer = _read_only
    conn.set_progress_handler(deadline, PROGRESS_STEPS)
    try:
        cursor = conn.execute(sql)
        try:  # apsw knows the columns only while rows are pending: read them before the rows
            columns = [d[0] for d in cursor.get_description()]
        except apsw.ExecutionCompleteError:
            columns = []  # no rows: no column names either
        rows = [tuple(r) for r in cursor]
    except apsw.InterruptError as exc:
        raise deadline.timed_out(where) from exc
    except apsw.AuthError as exc:
        raise InvalidInputs(f"{where}: only reads are allowed ({exc})",
                            hint="agentshards query runs SELECTs; no writes, PRAGMA changes or ATTACH") from exc
    except apsw.SQLError as exc:
        raise InvalidInputs(f"{where}: {exc}", hint="check the SQL; tables: workflows, steps, attempts, llm_ledger"
                            ) from exc
    finally:
        conn.set_progress_handler(None)
    return QueryResult(columns, rows)


def query_fleet(data_dir: str | os.PathLike[str], sql: str, *, reduce: str | None = None,
                timeout_s: float | None = DEFAULT_QUERY_TIMEOUT_S) -> QueryResult:
    """Run ``sql`` on every shard in ``data_dir`` (read-only); prefix each row with its agent id.

    ``timeout_s`` bounds the whole call (every shard and ``reduce``); past it InvalidInputs is raised.
    None: no limit. Ctrl-C (KeyboardInterrupt) stops a running statement too.
    """
    if timeout_s is not None and not timeout_s > 0:
        raise InvalidInputs(f"timeout_s must be positive, not {timeout_s!r}", hint="seconds, e.g. 30; None: no limit")
    deadline = _Deadline(timeout_s)
    ids = shard_ids(data_dir)
    columns: list[str] = ["agent_id"]
    merged: list[tuple[Any, ...]] = []
    for agent_id in ids:
        result = read_shard(Path(data_dir), validate_agent_id(agent_id), ShardConfig(),
                            functools.partial(_run, sql=sql, where=f"agent {agent_id}", deadline=deadline))
        if result.columns:
            columns = ["agent_id", *result.columns]
        merged.extend((agent_id, *row) for row in result.rows)
    if reduce is None:
        return QueryResult(columns, merged)
    memory = apsw.Connection(":memory:")
    try:
        names = ", ".join(f'"{c.replace(chr(34), chr(34) * 2)}"' for c in columns)
        memory.execute(f"CREATE TABLE rows({names})")
        if merged:
            marks = ", ".join("?" for _ in columns)
            memory.executemany(f"INSERT INTO rows VALUES ({marks})", merged)
        return _run(memory, reduce, "--reduce", deadline)
    finally:
        memory.close()

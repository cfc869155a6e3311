"""Fleet-wide SQL: one read-only query over every shard of a data dir, rows merged with an agent_id.

Read-only for real, not by convention: each shard is opened read-only with ``query_only`` (through
``read_shard``, so no file is created or changed), and an
authorizer allows only reads (SELECT, reading columns, calling functions), so writes, PRAGMA changes,
ATTACH and DETACH are refused by SQLite itself. ``reduce`` runs a second query over the merged rows
(an in-memory table ``rows``), for fleet totals such as spend by model.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import apsw

from .._base.config import ShardConfig
from .._base.errors import InvalidInputs
from .._core.shard import read_shard, shard_ids, validate_agent_id

_ALLOWED = {apsw.SQLITE_SELECT, apsw.SQLITE_READ, apsw.SQLITE_FUNCTION, apsw.SQLITE_RECURSIVE}


@dataclass(frozen=True)
class QueryResult:
    columns: list[str]
    rows: list[tuple[Any, ...]]


def _read_only(op: int, p1: str | None, p2: str | None, db: str | None, trigger: str | None) -> int:
    return apsw.SQLITE_OK if op in _ALLOWED else apsw.SQLITE_DENY


def _run(conn: apsw.Connection, sql: str, where: str) -> QueryResult:
    conn.authorizer = _read_only
    try:
        cursor = conn.execute(sql)
        try:  # apsw knows the columns only while rows are pending: read them before the rows
            columns = [d[0] for d in cursor.get_description()]
        except apsw.ExecutionCompleteError:
            columns = []  # no rows: no column names either
        rows = [tuple(r) for r in cursor]
    except apsw.AuthError as exc:
        raise InvalidInputs(f"{where}: only reads are allowed ({exc})",
                            hint="agentshards query runs SELECTs; no writes, PRAGMA changes or ATTACH") from exc
    except apsw.SQLError as exc:
        raise InvalidInputs(f"{where}: {exc}", hint="check the SQL; tables: workflows, steps, attempts, llm_ledger"
                            ) from exc
    return QueryResult(columns, rows)


def query_fleet(data_dir: str | os.PathLike[str], sql: str, *, reduce: str | None = None) -> QueryResult:
    """Run ``sql`` on every shard in ``data_dir`` (read-only); prefix each row with its agent id."""
    ids = shard_ids(data_dir)
    columns: list[str] = ["agent_id"]
    merged: list[tuple[Any, ...]] = []
    for agent_id in ids:
        result = read_shard(Path(data_dir), validate_agent_id(agent_id), ShardConfig(),
                            functools.partial(_run, sql=sql, where=f"agent {agent_id}"))
        if result.columns:
            columns = ["agent_id", *result.columns]
        merged.extend((agent_id, *row) for row in result.rows)
    if reduce is None:
        return QueryResult(columns, merged)
    memory = apsw.Connection(":memory:")
    names = ", ".join(f'"{c.replace(chr(34), chr(34) * 2)}"' for c in columns)
    memory.execute(f"CREATE TABLE rows({names})")
    if merged:
        marks = ", ".join("?" for _ in columns)
        memory.executemany(f"INSERT INTO rows VALUES ({marks})", merged)
    return _run(memory, reduce, "--reduce")

"""The shard's tables, and ordered migrations keyed by ``PRAGMA user_version``.

``workflows`` holds one row per run of the agent; ``steps`` one row per *completed* step. The partial
unique index makes "at most one open run per shard" a property of the file, not of our code.
"""

from __future__ import annotations

import apsw

from ._errors import ShardError
from ._sqlite import query, write_transaction

SCHEMA_V1 = """
CREATE TABLE shard_meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
) STRICT;

CREATE TABLE workflows (
    id           TEXT PRIMARY KEY,
    seq          INTEGER NOT NULL UNIQUE,
    target       TEXT NOT NULL,
    input_json   TEXT NOT NULL,
    input_digest TEXT NOT NULL,
    status       TEXT NOT NULL CHECK (status IN ('running', 'succeeded', 'failed', 'superseded')),
    output_json  TEXT,
    error_json   TEXT,
    created_at   REAL NOT NULL,
    updated_at   REAL NOT NULL,
    finished_at  REAL
) STRICT;

CREATE UNIQUE INDEX workflows_one_open ON workflows(status) WHERE status = 'running';

CREATE TABLE steps (
    workflow_id  TEXT NOT NULL REFERENCES workflows(id),
    step_name    TEXT NOT NULL,
    kind         TEXT NOT NULL CHECK (kind IN ('step', 'llm')),
    output_json  TEXT NOT NULL,
    completed_at REAL NOT NULL,
    UNIQUE (workflow_id, step_name)
) STRICT;
"""

SCHEMA_V2 = """
-- Non-determinism detection: a hash (and a short preview) of what each step was called with.
ALTER TABLE steps ADD COLUMN input_hash TEXT;
ALTER TABLE steps ADD COLUMN input_preview TEXT;
-- 'error': the provider rejected the request itself (400-class); replay raises the same error.
ALTER TABLE steps ADD COLUMN outcome TEXT NOT NULL DEFAULT 'ok' CHECK (outcome IN ('ok', 'error'));
ALTER TABLE workflows ADD COLUMN forked_from TEXT;

-- Intent records: one row per LLM request, committed before the request goes out. An attempt without
-- a completed step is a call that was in flight when the agent stopped.
CREATE TABLE attempts (
    workflow_id  TEXT NOT NULL REFERENCES workflows(id),
    step_name    TEXT NOT NULL,
    attempt      INTEGER NOT NULL,
    request_hash TEXT NOT NULL,
    started_at   REAL NOT NULL,
    PRIMARY KEY (workflow_id, step_name, attempt)
) STRICT;
"""

SCHEMA_V3 = """
-- Durability 'replicated': when Litestream confirmed the replica holds this step.
ALTER TABLE steps ADD COLUMN replicated_at REAL;
"""

MIGRATIONS: tuple[str, ...] = (SCHEMA_V1, SCHEMA_V2, SCHEMA_V3)
"""MIGRATIONS[i] takes a file from user_version i to i + 1. Append only; never edit a shipped entry."""

SCHEMA_VERSION = len(MIGRATIONS)

OUR_TABLES = frozenset({"shard_meta", "workflows", "steps", "attempts"})


def user_version(conn: apsw.Connection) -> int:
    return int(query(conn, "PRAGMA user_version")[0][0])


def check_file(conn: apsw.Connection, *, where: str) -> None:
    """Refuse, without writing anything, a file this agentshards must not touch.

    Run on a read-only connection: a newer schema, tables that are neither ours nor Litestream's, or a
    damaged file (``quick_check``) each raise ShardError and leave the file exactly as it was.
    """
    version = user_version(conn)
    if version > SCHEMA_VERSION:
        raise ShardError(
            f"{where} has schema version {version}, newer than this agentshards ({SCHEMA_VERSION})",
            hint="upgrade agentshards; the file was left untouched",
        )
    tables = {str(r[0]) for r in query(conn, "SELECT name FROM sqlite_schema WHERE type = 'table'")}
    foreign = {t for t in tables - OUR_TABLES if not t.startswith(("sqlite_", "_litestream_"))}
    if foreign:
        raise ShardError(
            f"{where} has tables that are not an agent shard's ({', '.join(sorted(foreign)[:5])})",
            hint="point data_dir at a directory that only agentshards writes to; the file was left untouched",
        )
    problems = [str(r[0]) for r in query(conn, "PRAGMA quick_check(5)")]
    if problems != ["ok"]:
        raise ShardError(f"{where} is damaged: {'; '.join(problems)[:300]}",
                         hint="restore it from its replica or archive; the file was left untouched")


def migrate(conn: apsw.Connection, *, where: str) -> None:
    """Bring a checked file to SCHEMA_VERSION, one transaction per migration."""
    for target in range(user_version(conn), SCHEMA_VERSION):
        with write_transaction(conn):
            # Re-read inside the write lock: another connection may have migrated meanwhile.
            if user_version(conn) != target:
                continue
            conn.execute(MIGRATIONS[target])
            conn.execute(f"PRAGMA user_version = {target + 1}")

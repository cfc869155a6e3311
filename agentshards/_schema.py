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

MIGRATIONS: tuple[str, ...] = (SCHEMA_V1,)
"""MIGRATIONS[i] takes a file from user_version i to i + 1. Append only; never edit a shipped entry."""

SCHEMA_VERSION = len(MIGRATIONS)

OUR_TABLES = frozenset({"shard_meta", "workflows", "steps"})


def user_version(conn: apsw.Connection) -> int:
    return int(query(conn, "PRAGMA user_version")[0][0])


def migrate(conn: apsw.Connection, *, where: str) -> None:
    """Bring the file to SCHEMA_VERSION, one transaction per step, refusing files we do not understand."""
    version = user_version(conn)
    if version > SCHEMA_VERSION:
        raise ShardError(
            f"{where} has schema version {version}, newer than this agentshards ({SCHEMA_VERSION})",
            hint="upgrade agentshards; the file was left untouched",
        )
    if version == 0:
        tables = {
            r[0]
            for r in conn.execute("SELECT name FROM sqlite_schema WHERE type = 'table'")
            if not str(r[0]).startswith(("sqlite_", "_litestream_"))
        }
        if tables:
            raise ShardError(
                f"{where} is a SQLite file with other tables ({', '.join(sorted(tables))}), not an agent shard",
                hint="point data_dir at a directory that only agentshards writes to",
            )
    for target in range(version, SCHEMA_VERSION):
        with write_transaction(conn):
            # Re-read inside the write lock: another connection may have migrated meanwhile.
            if user_version(conn) != target:
                continue
            conn.execute(MIGRATIONS[target])
            conn.execute(f"PRAGMA user_version = {target + 1}")

"""The shard's tables, and ordered migrations keyed by ``PRAGMA user_version``.

``workflows`` holds one row per run of the agent; ``steps`` one row per *completed* step. The partial
unique index makes "at most one open run per shard" a property of the file, not of our code.
"""

from __future__ import annotations

import functools

import apsw

from .._base.errors import ShardError
from .sqlite import query, write_transaction

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

SCHEMA_V4 = """
-- 'budget_exceeded' and 'cancelled' are final run states: SQLite cannot alter a CHECK, so the table is rebuilt
-- (foreign keys are off while migrating, see migrate()).
CREATE TABLE workflows_v4 (
    id           TEXT PRIMARY KEY,
    seq          INTEGER NOT NULL UNIQUE,
    target       TEXT NOT NULL,
    input_json   TEXT NOT NULL,
    input_digest TEXT NOT NULL,
    status       TEXT NOT NULL
                 CHECK (status IN ('running', 'succeeded', 'failed', 'superseded', 'budget_exceeded', 'cancelled')),
    output_json  TEXT,
    error_json   TEXT,
    created_at   REAL NOT NULL,
    updated_at   REAL NOT NULL,
    finished_at  REAL,
    forked_from  TEXT,
    executions   INTEGER NOT NULL DEFAULT 0
) STRICT;
INSERT INTO workflows_v4(id, seq, target, input_json, input_digest, status, output_json, error_json, created_at,
                         updated_at, finished_at, forked_from)
    SELECT id, seq, target, input_json, input_digest, status, output_json, error_json, created_at, updated_at,
           finished_at, forked_from FROM workflows;
DROP TABLE workflows;
ALTER TABLE workflows_v4 RENAME TO workflows;
CREATE UNIQUE INDEX workflows_one_open ON workflows(status) WHERE status = 'running';

-- Failed LLM attempts are marked, so an attempt with no outcome and no completed step is one that was
-- in flight when the agent died (its spend is unrecorded).
ALTER TABLE attempts ADD COLUMN outcome TEXT;

-- The cost ledger, append-only. 'call': a request answered and recorded (what was spent). 'replay': a
-- recorded call returned from the journal in one execution of the run (what was saved); unique per
-- execution, so re-running the same execution never counts twice.
CREATE TABLE llm_ledger (
    id            INTEGER PRIMARY KEY,
    workflow_id   TEXT NOT NULL REFERENCES workflows(id),
    step_name     TEXT NOT NULL,
    event         TEXT NOT NULL CHECK (event IN ('call', 'replay')),
    execution     INTEGER NOT NULL,
    model         TEXT,
    input_tokens  INTEGER,
    cached_tokens INTEGER,
    output_tokens INTEGER,
    latency_s     REAL,
    cost_usd      REAL,
    recorded_at   REAL NOT NULL,
    UNIQUE (workflow_id, step_name, event, execution)
) STRICT;
"""

MIGRATIONS: tuple[str, ...] = (SCHEMA_V1, SCHEMA_V2, SCHEMA_V3, SCHEMA_V4)
"""MIGRATIONS[i] takes a file from user_version i to i + 1. Append only; never edit a shipped entry."""

SCHEMA_VERSION = len(MIGRATIONS)

LITESTREAM_TABLES = frozenset({"_litestream_seq", "_litestream_lock"})
"""The two tables Litestream creates in every database it replicates; restored files carry them too."""

SQLITE_TABLES = frozenset({"sqlite_sequence", "sqlite_stat1", "sqlite_stat2", "sqlite_stat3", "sqlite_stat4"})
"""Tables SQLite itself may add (AUTOINCREMENT, ANALYZE); other ``sqlite_`` names take writable_schema to make."""


def user_version(conn: apsw.Connection) -> int:
    return int(query(conn, "PRAGMA user_version")[0][0])


@functools.cache
def expected_objects(version: int) -> frozenset[tuple[str, str, str]]:
    """(type, name, table) of every schema object that MIGRATIONS[:version] create, SQLite's automatic
    indexes included: read from an in-memory database built by the migrations themselves (once per
    version and process), so the list cannot drift from the migrations."""
    memory = apsw.Connection(":memory:")
    try:
        for migration in MIGRATIONS[:version]:
            memory.execute(migration)
        return frozenset(query(memory, "SELECT type, name, tbl_name FROM sqlite_schema"))
    finally:
        memory.close()


def check_file(conn: apsw.Connection, *, where: str) -> None:
    """Refuse, without writing anything, a file this agentshards must not touch.

    Run on a read-only connection: a newer schema, any schema object (table, index, trigger, view)
    that the file's migrations did not create or one they created gone missing (a foreign or tampered
    file: a replica from the bucket can carry triggers and views), or a damaged file (``quick_check``)
    each raise ShardError and leave the file exactly as it was. Litestream's two tables and SQLite's own
    are allowed. One small ``sqlite_schema`` read: this runs on every open of an existing shard.
    """
    version = user_version(conn)
    if version > SCHEMA_VERSION:
        raise ShardError(
            f"{where} has schema version {version}, newer than this agentshards ({SCHEMA_VERSION})",
            hint="upgrade agentshards; the file was left untouched",
        )
    expected = expected_objects(version)
    found = set(query(conn, "SELECT type, name, tbl_name FROM sqlite_schema"))
    if found != expected:
        _refuse_schema(found, expected, version, where)
    problems = [str(r[0]) for r in query(conn, "PRAGMA quick_check(5)")]
    if problems != ["ok"]:
        raise ShardError(f"{where} is damaged: {'; '.join(problems)[:300]}",
                         hint="restore it from its replica or archive; the file was left untouched")


def _refuse_schema(found: set[tuple[str, ...]], expected: frozenset[tuple[str, str, str]], version: int,
                   where: str) -> None:
    """Raise for objects the migrations did not create or for ones they did that are missing; let pass
    Litestream's and SQLite's own tables."""
    foreign = sorted(f"{t} {n}" for t, n, _ in found - expected
                     if not (t == "table" and (n in LITESTREAM_TABLES or n in SQLITE_TABLES)))
    if foreign:
        raise ShardError(
            f"{where} has schema objects that its migrations did not create ({', '.join(foreign[:5])})",
            hint="a foreign or tampered file (from another program, or a replica someone changed); "
                 "point data_dir at a directory only agentshards writes to. The file was left untouched",
        )
    missing = sorted(f"{t} {n}" for t, n, _ in expected - found)
    if missing:
        raise ShardError(f"{where} lacks schema objects of version {version} ({', '.join(missing[:5])})",
                         hint="the file was changed outside agentshards; restore it from its replica or "
                              "archive. It was left untouched")


def migrate(conn: apsw.Connection, *, where: str) -> None:
    """Bring a checked file to SCHEMA_VERSION, one transaction per migration.

    Foreign keys are off while migrating (a table rebuild drops and renames a referenced table; the
    pragma cannot change inside a transaction) and ``foreign_key_check`` must pass before each commit.
    """
    if user_version(conn) >= SCHEMA_VERSION:
        return
    conn.execute("PRAGMA foreign_keys=OFF")
    try:
        for target in range(user_version(conn), SCHEMA_VERSION):
            with write_transaction(conn):
                # Re-read inside the write lock: another connection may have migrated meanwhile.
                if user_version(conn) != target:
                    continue
                conn.execute(MIGRATIONS[target])
                broken = query(conn, "PRAGMA foreign_key_check")
                if broken:
                    raise ShardError(f"{where}: migration to v{target + 1} broke references: {broken[:3]}",
                                     hint="the file was left at its previous version")
                conn.execute(f"PRAGMA user_version = {target + 1}")
    finally:
        conn.execute("PRAGMA foreign_keys=ON")

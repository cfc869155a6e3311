"""The one place that opens SQLite connections, and the write-transaction helper.

Every agent shard is shared with a Litestream process that reads the WAL and runs its own checkpoints,
so the settings below are chosen to cooperate with it (see ``litestream/README.md``).
"""

from __future__ import annotations

import os
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import apsw

from .._base.config import ShardConfig
from .._base.errors import AgentShardsError, ShardError
from . import fence as _fence

T = TypeVar("T")

MIN_SQLITE = (3, 51, 3)
"""SQLite 3.7.0-3.51.2 can corrupt a WAL database when an external process checkpoints it while the
application writes (the WAL-reset bug), which is exactly the Litestream setup."""

STATEMENT_CACHE = 32
"""Prepared statements a shard connection keeps (see open_connection)."""


def sqlite_version() -> tuple[int, ...]:
    return tuple(int(p) for p in apsw.sqlite_lib_version().split("."))


def require_sqlite() -> None:
    """Refuse SQLite builds with the WAL-reset bug; apsw wheels bundle their own SQLite."""
    if sqlite_version() < MIN_SQLITE:
        need = ".".join(map(str, MIN_SQLITE))
        raise ShardError(
            f"SQLite {apsw.sqlite_lib_version()} (via apsw) has the WAL-reset bug that an external "
            f"checkpointer such as Litestream can trigger; {need} or newer is required",
            hint="pip install -U apsw (its wheels bundle a current SQLite)")


def open_connection(path: Path, config: ShardConfig, *, create: bool = True, readonly: bool = False,
                    leave_no_trace: bool = False) -> apsw.Connection:
    """Open ``path`` with every pragma agentshards relies on, each set for a stated reason.

    ``readonly`` connections change nothing in the file (no WAL switch): they are how a file of unknown
    origin is examined before agentshards writes to it, and how status, inspect, spend and query read.
    ``leave_no_trace`` ones also create and change no file beside it where SQLite allows that (see
    ``readonly_mode``); ``read_file`` opens them, because it alone notices a writer that starts during an
    unlocked read.
    """
    name = str(path)
    if readonly:
        flags = apsw.SQLITE_OPEN_READONLY
        mode = readonly_mode(path) if leave_no_trace else None
        if mode is not None:
            # A URI built here from the quoted absolute path: no parameter can come from the file name.
            name = f"file:{urllib.parse.quote(str(Path(path).absolute()))}?{mode}=1"
            flags |= apsw.SQLITE_OPEN_URI
    else:
        mode = None
        flags = apsw.SQLITE_OPEN_READWRITE | (apsw.SQLITE_OPEN_CREATE if create else 0)
    # Extension loading stays disabled (apsw's default): shard files may arrive from a replica or an archive.
    # 32 prepared statements kept, not apsw's 100: the per-step path uses 7 (BEGIN, the step row, COMMIT;
    # an LLM step 4 more), while creating a shard prepares ~40 once (schema, migrations) that would
    # otherwise stay cached for the connection's life: ~75 KB per new shard (apsw.memory_used). A fleet's
    # workers open shards the supervisor created, so their memory did not move (723 vs 727 MB, 1,000 agents).
    conn = apsw.Connection(name, flags=flags, vfs=config.vfs, statementcachesize=STATEMENT_CACHE)
    try:
        # First, before any other statement: Litestream holds locks briefly; without a busy timeout a
        # PRAGMA below (even journal_mode) can fail with SQLITE_BUSY at once.
        conn.set_busy_timeout(config.busy_timeout_ms)
        # Files may come from S3: do not let schema objects (triggers, views) call app-defined functions.
        conn.execute("PRAGMA trusted_schema=OFF")
        # Detect a damaged b-tree page as corruption instead of reading past it.
        conn.execute("PRAGMA cell_size_check=ON")
        # Closing the last connection must not checkpoint (SQLite's default, even with wal_autocheckpoint=0):
        # that copies the WAL into the file and deletes it, an app-side checkpoint that Litestream never sees
        # when it is not holding the file (a restart gap, a killed Litestream, an offline command), and the
        # mechanism behind the corrupt restores. Set on every shard connection, not only replicated ones:
        # whether a file is replicated is not known where it is opened (the CLI, archive, recover), and a
        # local-only shard loses nothing by it (its WAL stays bounded by wal_autocheckpoint and is read by
        # the next open). Read-only connections never checkpoint; setting it there too costs nothing.
        conn.config(apsw.SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, 1)
        if readonly:
            # Belt and braces on top of the read-only open: refuse any write through this connection.
            conn.execute("PRAGMA query_only=ON")
            if mode == READONLY_SHM:
                # Read once now: a -shm that needs rebuilding (its last writer crashed, or one is starting
                # up) cannot be rebuilt through a read-only mapping (SQLITE_READONLY_RECOVERY/CANTINIT).
                # Then read as any reader does, which may update the -shm's reader marks.
                try:
                    conn.execute("SELECT 1 FROM sqlite_schema LIMIT 1").fetchall()
                except (apsw.ReadOnlyError, apsw.CantOpenError, apsw.BusyError):
                    conn.close()
                    return open_connection(path, config, readonly=True)
            return conn
        # WAL: readers (Litestream, inspect) never block the agent's writes, and Litestream replicates the WAL.
        journal_mode = conn.execute("PRAGMA journal_mode=WAL").fetchall()[0][0]
        if str(journal_mode).lower() != "wal":
            raise apsw.CantOpenError(f"could not switch {path} to WAL (got {journal_mode!r})")
        # FULL (default) syncs the WAL at every commit: a recorded step survives power loss. NORMAL only
        # survives a process crash; configurable for users who accept that. Never OFF.
        conn.execute(f"PRAGMA synchronous={config.synchronous}")
        # Enforce the steps -> workflows reference.
        conn.execute("PRAGMA foreign_keys=ON")
        # Automatic PASSIVE checkpoints at SQLite's 1000 pages for local-only shards; 0 (off) for replicated
        # ones, whose checkpoints Litestream owns (see ShardConfig.wal_autocheckpoint). We never run
        # TRUNCATE/RESTART checkpoints ourselves.
        conn.execute(f"PRAGMA wal_autocheckpoint={int(config.wal_autocheckpoint)}")
    except BaseException:
        conn.close()
        raise
    return conn


IMMUTABLE, READONLY_SHM = "immutable", "readonly_shm"


def readonly_mode(path: Path) -> str | None:
    """How to read ``path`` without creating or changing any file, measured on SQLite 3.54:

    A plain read-only open of a WAL database creates a missing ``-wal`` and ``-shm`` and writes reader
    marks into the ``-shm``. Without a ``-wal`` every committed page is in the file itself, so it is read
    as ``immutable`` (no locks, no side files; ``read_file`` re-reads if a writer started meanwhile).
    With both, ``readonly_shm`` maps the ``-shm`` read-only (SQLite's mode for read-only media, safe
    beside a live writer). A ``-wal`` without its ``-shm`` needs the index rebuilt from the WAL, which
    SQLite only does by creating the ``-shm``: None, a plain read-only open (the file and its WAL are still
    left as they were).
    """
    if not Path(f"{path}-wal").exists():
        return IMMUTABLE
    if Path(f"{path}-shm").exists():
        return READONLY_SHM
    return None


def _unlocked_state(path: Path) -> tuple[int, int, int] | None:
    """What a writer starting during an ``immutable`` read would change (None: not read immutable)."""
    if Path(f"{path}-wal").exists():
        return None
    st = os.stat(path)
    return st.st_ino, st.st_size, st.st_mtime_ns


def read_file(path: Path, config: ShardConfig, read: Callable[[apsw.Connection], T]) -> T:
    """``read(conn)`` on a read-only connection that leaves no trace, trusted only if no writer started
    meanwhile.

    An ``immutable`` read takes no locks, so a writer that opened the file during it (its ``-wal``
    appears, the file may change) is invisible to SQLite: then the answer, or the error a torn read
    raised, is dropped and ``read`` runs once more on a plain read-only connection, which locks as any
    reader does. ``read`` must only read.
    """
    before = _unlocked_state(path)
    conn = open_connection(path, config, readonly=True, leave_no_trace=True)
    try:
        result = read(conn)
    except (apsw.Error, AgentShardsError):
        if before is None or _unlocked_state(path) == before:
            raise
    else:
        if before is None or _unlocked_state(path) == before:
            return result
    finally:
        conn.close()
    conn = open_connection(path, config, readonly=True)
    try:
        return read(conn)
    finally:
        conn.close()


def query(conn: apsw.Connection, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Rows of ``sql`` as plain tuples (typed loosely: SQLite columns are dynamically typed)."""
    rows: list[tuple[Any, ...]] = conn.execute(sql, params).fetchall()
    return rows


class write_transaction:
    """``BEGIN IMMEDIATE`` so the write lock is taken up front and ``busy_timeout`` applies.

    A DEFERRED transaction that later upgrades to a write gets SQLITE_BUSY immediately, ignoring the
    busy timeout, which is the classic "database is locked" with Litestream attached. COMMIT can fail
    too (disk full): then the transaction is rolled back, as it is when the process's write fence
    (``fence.py``) refuses the commit. A class, not a generator: it sits on the per-step hot path.
    """

    __slots__ = ("_conn",)

    def __init__(self, conn: apsw.Connection) -> None:
        self._conn = conn

    def __enter__(self) -> apsw.Connection:
        self._conn.execute("BEGIN IMMEDIATE")
        return self._conn

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        if exc_type is None:
            try:
                _fence.check()  # a fenced fleet worker commits nothing more (rolled back below)
                self._conn.execute("COMMIT")
                return
            except BaseException:
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                raise
        if self._conn.in_transaction:
            self._conn.execute("ROLLBACK")

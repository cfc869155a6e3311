"""An agent's shard: agent id -> validated file path, and opening that file as a journal store."""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable
from pathlib import Path

import apsw

from .._base.config import ShardConfig
from .._base.errors import InvalidAgentId, ShardError
from .replace import aside_dir, finish_interrupted_replace
from .schema import SCHEMA_VERSION, check_file, migrate, user_version
from .sqlite import T, open_connection, query, read_file, require_sqlite, write_transaction

_AGENT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
SHARD_SUFFIX = ".db"


def validate_agent_id(agent_id: object) -> str:
    """Return ``agent_id`` if it is safe as a file name and an S3 key, else raise InvalidAgentId.

    ASCII letters, digits, '.', '_' and '-', starting with a letter or digit, at most 128 characters and
    never '..': no path separators, no traversal, no NUL, no look-alike unicode, no leading dot or dash.
    """
    if isinstance(agent_id, str) and _AGENT_ID.fullmatch(agent_id) and ".." not in agent_id:
        return agent_id
    shown = ascii(agent_id) if isinstance(agent_id, str) else f"{type(agent_id).__name__} {agent_id!r}"
    raise InvalidAgentId(
        f"invalid agent id {shown[:200]}",
        hint="use 1-128 ASCII letters, digits, '.', '_' or '-', starting with a letter or digit, without '..'",
    )


def shard_path(data_dir: Path, agent_id: str) -> Path:
    return Path(data_dir) / f"{validate_agent_id(agent_id)}{SHARD_SUFFIX}"


def shard_ids(data_dir: str | os.PathLike[str]) -> list[str]:
    """The agents with a shard in ``data_dir``, sorted: files named ``<agent id>.db``.

    Other ``*.db`` files are not shards and are skipped: the temporary files of a fetch or a restore are
    dot-files (no agent id starts with a dot), and a leftover one must not break every scan of the data dir.
    """
    ids = (p.name[: -len(SHARD_SUFFIX)] for p in Path(data_dir).glob(f"*{SHARD_SUFFIX}"))
    return sorted(i for i in ids if _AGENT_ID.fullmatch(i) and ".." not in i)


def open_shard(data_dir: Path, agent_id: str, config: ShardConfig, *, create: bool = True,
               verified: bool = False) -> apsw.Connection:
    """Open (creating if asked) the agent's file, checked, migrated to the current schema and bound to its id.

    An existing file is first examined through a read-only connection, so a file we refuse (not SQLite,
    damaged, newer schema, someone else's tables) is left byte-for-byte untouched. ``verified``: the caller
    has just run that examination and more (a restore's ``verify_restored``), so it is not repeated.
    """
    require_sqlite()
    path = shard_path(data_dir, agent_id)
    if not path.exists():  # a replace killed before its new file arrived set the old shard aside
        finish_interrupted_replace(path)
    if path.exists():
        if not verified:
            _check_existing(path, agent_id, config)
    elif create:
        Path(data_dir).mkdir(parents=True, exist_ok=True)
    else:
        raise ShardError(f"no shard at {path}", agent_id=agent_id, hint="check --data-dir and the agent id")
    try:
        conn = open_connection(path, config, create=create)
    except apsw.Error as exc:
        raise _unusable(path, agent_id, exc) from exc
    try:
        migrate(conn, where=str(path))
        _bind_agent_id(conn, agent_id, path)
    except ShardError as exc:
        conn.close()
        raise ShardError(exc.message, hint=exc.hint, agent_id=agent_id) from None
    except apsw.Error as exc:
        conn.close()
        raise _unusable(path, agent_id, exc) from exc
    return conn


def _check_existing(path: Path, agent_id: str, config: ShardConfig) -> None:
    try:
        read_file(path, config, lambda conn: check_file(conn, where=str(path)))
    except ShardError as exc:
        raise ShardError(exc.message, hint=exc.hint, agent_id=agent_id) from None
    except apsw.Error as exc:
        raise _unusable(path, agent_id, exc, verb="read") from exc


def read_shard(data_dir: Path, agent_id: str, config: ShardConfig, read: Callable[[apsw.Connection], T]) -> T:
    """``read(conn)`` on the agent's shard opened read-only, for status, inspect, spend and query.

    Checked as ``open_shard`` checks, but never migrated nor stamped, and no file is created or changed
    (see ``read_file``): looking at a shard must not be a write Litestream has to replicate, nor a
    checkpoint it never sees. A shard of an older schema is read through a migrated copy in memory.
    """
    require_sqlite()
    path = shard_path(data_dir, agent_id)
    if not path.exists():
        # A replace killed before its new file arrived set the old shard aside: it is read there, where it
        # is whole; the next read-write open puts it back.
        path = aside_dir(path) / path.name
        if not path.exists():
            raise ShardError(f"no shard at {shard_path(data_dir, agent_id)}", agent_id=agent_id,
                             hint="check --data-dir and the agent id")

    def owned(conn: apsw.Connection) -> T:
        owner = query(conn, "SELECT value FROM shard_meta WHERE key = 'agent_id'")
        if owner and owner[0][0] != agent_id:
            raise ShardError(f"{path} belongs to agent {owner[0][0]!r}",
                             hint="shard files must not be renamed or copied between agents")
        return read(conn)

    def checked(conn: apsw.Connection) -> T:
        check_file(conn, where=str(path))
        if user_version(conn) >= SCHEMA_VERSION:
            return owned(conn)
        copy = _migrated_copy(conn, where=str(path))
        try:
            return owned(copy)
        finally:
            copy.close()

    try:
        return read_file(path, config, checked)
    except ShardError as exc:
        if exc.agent_id is not None:
            raise
        raise ShardError(exc.message, hint=exc.hint, agent_id=agent_id) from None
    except apsw.Error as exc:
        raise _unusable(path, agent_id, exc, verb="read") from exc


def _migrated_copy(conn: apsw.Connection, *, where: str) -> apsw.Connection:
    """An in-memory copy of an older shard, migrated: what the file will hold once a read-write open
    migrates it, without writing it now."""
    image = bytearray(conn.serialize("main") or b"")
    if len(image) >= 100:
        image[18:20] = b"\x01\x01"  # the header's rollback-journal mode: an in-memory database has no WAL
    memory = apsw.Connection(":memory:")
    try:
        if image:
            memory.deserialize("main", bytes(image))
        migrate(memory, where=where)
    except BaseException:
        memory.close()
        raise
    return memory


def _unusable(path: Path, agent_id: str, exc: apsw.Error, *, verb: str = "write") -> ShardError:
    if isinstance(exc, apsw.NotADBError):
        return ShardError(f"{path} is not a SQLite database", agent_id=agent_id,
                          hint="something else wrote this file; move it away, it was left untouched")
    if isinstance(exc, (apsw.FullError, apsw.ReadOnlyError, apsw.IOError, apsw.CantOpenError)):
        return ShardError(f"cannot {verb} {path}: {exc}", agent_id=agent_id,
                          hint="check free space, permissions and that the filesystem is writable")
    return ShardError(f"cannot use {path}: {exc}", agent_id=agent_id,
                      hint="the file may be damaged; restore it from its replica. It was left untouched")


def _bind_agent_id(conn: apsw.Connection, agent_id: str, path: Path) -> None:
    """Stamp the id into a new file; refuse a file that belongs to another agent (renamed or copied)."""
    rows = query(conn, "SELECT value FROM shard_meta WHERE key = 'agent_id'")
    if not rows:
        with write_transaction(conn):
            conn.execute(
                "INSERT OR IGNORE INTO shard_meta(key, value) VALUES ('agent_id', ?), ('created_at', ?)",
                (agent_id, repr(time.time())),
            )
        rows = query(conn, "SELECT value FROM shard_meta WHERE key = 'agent_id'")
    if rows[0][0] != agent_id:
        raise ShardError(
            f"{path} belongs to agent {rows[0][0]!r}",
            hint="shard files must not be renamed or copied between agents",
        )

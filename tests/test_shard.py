"""Agent ids, the one connection function and its pragmas, the schema and unusable files."""

from __future__ import annotations

import hashlib
from pathlib import Path

import apsw
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agentshards import InvalidAgentId, ShardConfig, ShardError, run_agent, validate_agent_id
from agentshards._core.schema import SCHEMA_VERSION
from agentshards._core.shard import open_shard, shard_path
from agentshards._core.sqlite import open_connection

import sample_agents

BAD_IDS = ["", "../x", "..", "a/../b", "a/b", "/etc/passwd", "a\\b", "a\x00b", "a..b", ".hidden", "-flag",
           "_x", "a b", "ａgent", "agént", "a\n", "x" * 129, "C:", None, 7, b"abc"]


@pytest.mark.parametrize("bad", BAD_IDS)
def test_invalid_ids_are_refused_before_touching_disk(bad: object, tmp_path: Path) -> None:
    data = tmp_path / "never-created"
    with pytest.raises(InvalidAgentId) as info:
        run_agent(sample_agents.two_steps, agent_id=bad, data_dir=data, x=1)  # type: ignore[arg-type]
    assert not data.exists()
    assert "hint:" in str(info.value)
    if isinstance(bad, str) and bad:
        assert ascii(bad)[:40] in str(info.value)


@settings(max_examples=300, deadline=None)
@given(st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9._-]{0,127}\Z"))
def test_valid_ids_map_to_a_file_directly_inside_data_dir(agent_id: str) -> None:
    if ".." in agent_id:
        with pytest.raises(InvalidAgentId):
            validate_agent_id(agent_id)
        return
    path = shard_path(Path("/data"), agent_id)
    assert path.parent == Path("/data")
    assert path.name == agent_id + ".db"


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=140))
def test_any_accepted_id_is_plain_ascii(agent_id: str) -> None:
    try:
        validate_agent_id(agent_id)
    except InvalidAgentId:
        return
    assert agent_id.isascii() and "/" not in agent_id and ".." not in agent_id and "\x00" not in agent_id


@pytest.mark.parametrize(("sync", "level"), [("FULL", 2), ("NORMAL", 1)])
def test_connection_pragmas(tmp_path: Path, sync: str, level: int) -> None:
    conn = open_connection(tmp_path / "p.db", ShardConfig(synchronous=sync))  # type: ignore[arg-type]
    assert conn.execute("PRAGMA journal_mode").fetchall()[0][0] == "wal"
    assert conn.execute("PRAGMA synchronous").fetchall()[0][0] == level
    assert conn.execute("PRAGMA busy_timeout").fetchall()[0][0] >= 5000
    assert conn.execute("PRAGMA wal_autocheckpoint").fetchall()[0][0] == 1000  # SQLite's default, untouched
    assert conn.execute("PRAGMA trusted_schema").fetchall()[0][0] == 0


def test_config_refuses_unsafe_settings() -> None:
    with pytest.raises(ValueError):
        ShardConfig(synchronous="OFF")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        ShardConfig(busy_timeout_ms=100)


def test_schema_version_is_stamped(tmp_path: Path) -> None:
    conn = open_shard(tmp_path, "a1", ShardConfig())
    assert conn.execute("PRAGMA user_version").fetchall()[0][0] == SCHEMA_VERSION == 4
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_schema WHERE type='table'")}
    assert {"workflows", "steps", "shard_meta"} <= tables


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_not_a_database_is_refused_untouched(tmp_path: Path) -> None:
    path = tmp_path / "a1.db"
    path.write_bytes(b"this is not sqlite at all, just text " * 200)
    before = _digest(path)
    with pytest.raises(ShardError, match="a1"):
        open_shard(tmp_path, "a1", ShardConfig())
    assert _digest(path) == before


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    conn = open_shard(tmp_path, "a1", ShardConfig())
    conn.execute("PRAGMA user_version = 99")
    conn.close()
    with pytest.raises(ShardError, match="newer"):
        open_shard(tmp_path, "a1", ShardConfig())


def test_foreign_sqlite_file_is_refused(tmp_path: Path) -> None:
    conn = apsw.Connection(str(tmp_path / "a1.db"))
    conn.execute("CREATE TABLE customers(id INTEGER PRIMARY KEY)")
    conn.close()
    with pytest.raises(ShardError, match="customers"):
        open_shard(tmp_path, "a1", ShardConfig())


def test_litestream_tables_are_tolerated(tmp_path: Path) -> None:
    conn = apsw.Connection(str(tmp_path / "a1.db"))
    conn.execute("CREATE TABLE _litestream_seq(id INTEGER PRIMARY KEY, seq INTEGER)")
    conn.close()
    open_shard(tmp_path, "a1", ShardConfig()).close()


def test_renamed_shard_is_refused(tmp_path: Path) -> None:
    open_shard(tmp_path, "a1", ShardConfig()).close()
    for suffix in ("", "-wal", "-shm"):  # a WAL database is the file and its WAL: closing does not merge them
        (tmp_path / f"a1.db{suffix}").rename(tmp_path / f"a2.db{suffix}")
    with pytest.raises(ShardError, match="belongs to agent 'a1'"):
        open_shard(tmp_path, "a2", ShardConfig())


def test_replicated_shards_leave_checkpoints_to_litestream(tmp_path: Path) -> None:
    """A checkpoint that resets the WAL while Litestream is down loses frames it never read; replicated
    shards therefore turn SQLite's automatic checkpoints off (run_agent with a replica, Fleet with one)."""
    from agentshards._base.config import RunConfig, litestream_owned
    from agentshards._core.sqlite import open_connection

    local = open_connection(tmp_path / "l.db", RunConfig().shard)
    owned = open_connection(tmp_path / "o.db", litestream_owned(RunConfig()).shard)
    try:
        assert local.execute("PRAGMA wal_autocheckpoint").fetchall() == [(1000,)]
        assert owned.execute("PRAGMA wal_autocheckpoint").fetchall() == [(0,)]
    finally:
        local.close()
        owned.close()
    with pytest.raises(ValueError, match="wal_autocheckpoint"):
        ShardConfig(wal_autocheckpoint=-1)


@pytest.mark.parametrize("replicated", [True, False])
def test_closing_a_shard_never_checkpoints_its_wal(tmp_path: Path, replicated: bool) -> None:
    """SQLite checkpoints and deletes the WAL when the last connection closes, even with
    wal_autocheckpoint=0. With no Litestream holding the file (a restart gap, a killed Litestream, an
    offline command, Fleet.launch's open-and-close) that is an app-side checkpoint Litestream never sees."""
    from agentshards._base.config import RunConfig, litestream_owned

    config = litestream_owned(RunConfig()).shard if replicated else ShardConfig()
    conn = open_shard(tmp_path, "a1", config)
    conn.execute("INSERT INTO shard_meta VALUES ('note', 'in the WAL')")
    conn.close()
    db, wal = tmp_path / "a1.db", tmp_path / "a1.db-wal"
    assert wal.exists() and wal.stat().st_size > 0
    before = (_digest(db), _digest(wal))
    open_shard(tmp_path, "a1", config).close()  # an existing shard opened and closed again
    assert wal.stat().st_size > 0 and (_digest(db), _digest(wal)) == before
    check = apsw.Connection(str(db), flags=apsw.SQLITE_OPEN_READONLY)
    check.config(apsw.SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, 1)
    assert check.execute("SELECT value FROM shard_meta WHERE key = 'note'").fetchall() == [("in the WAL",)]
    check.close()


@pytest.mark.parametrize(("tamper", "named"), [
    ("CREATE TRIGGER wipe AFTER INSERT ON steps BEGIN DELETE FROM workflows; END", "trigger wipe"),
    ("CREATE VIEW runs AS SELECT * FROM workflows", "view runs"),
    ("CREATE TABLE extra(x)", "table extra"),
    ("CREATE INDEX steps_by_kind ON steps(kind)", "index steps_by_kind"),
    ("DROP INDEX workflows_one_open", "index workflows_one_open"),  # the one-open-run guarantee, removed
])
def test_schema_objects_the_migrations_did_not_create_are_refused(tmp_path: Path, tamper: str, named: str) -> None:
    """A replica from the bucket is untrusted: triggers or views in it would run or answer inside the agent."""
    from agentshards import inspect_agent

    open_shard(tmp_path, "a1", ShardConfig()).close()
    conn = apsw.Connection(str(tmp_path / "a1.db"))
    conn.execute(tamper)
    conn.close()
    before = {p.name: _digest(p) for p in tmp_path.iterdir() if p.is_file()}
    with pytest.raises(ShardError, match=named) as info:
        open_shard(tmp_path, "a1", ShardConfig())
    assert info.value.agent_id == "a1" and info.value.hint
    with pytest.raises(ShardError, match=named):
        inspect_agent(tmp_path, "a1")
    assert {p.name: _digest(p) for p in tmp_path.iterdir() if p.is_file()} == before


def test_litestream_and_sqlite_tables_are_the_only_extras_allowed(tmp_path: Path) -> None:
    open_shard(tmp_path, "a1", ShardConfig()).close()
    conn = apsw.Connection(str(tmp_path / "a1.db"))
    conn.execute("CREATE TABLE _litestream_seq (id INTEGER PRIMARY KEY, seq INTEGER)")
    conn.execute("CREATE TABLE _litestream_lock (id INTEGER)")
    conn.execute("ANALYZE")  # sqlite_stat1, SQLite's own
    conn.execute("CREATE TABLE _litestream_other (id INTEGER)")
    conn.close()
    with pytest.raises(ShardError, match="table _litestream_other"):
        open_shard(tmp_path, "a1", ShardConfig())
    conn = apsw.Connection(str(tmp_path / "a1.db"))
    conn.execute("DROP TABLE _litestream_other")
    conn.close()
    open_shard(tmp_path, "a1", ShardConfig()).close()


def test_an_unlocked_read_is_redone_when_a_writer_starts_during_it(tmp_path: Path) -> None:
    """A shard without a -wal is read immutable (no locks, no side files): SQLite cannot see a writer that
    starts meanwhile, so read_file notices the -wal it creates and reads again with locks."""
    from agentshards._core.sqlite import IMMUTABLE, read_file, readonly_mode

    open_shard(tmp_path, "a1", ShardConfig()).close()
    path = tmp_path / "a1.db"
    conn = apsw.Connection(str(path))
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()  # a plain close: the WAL is merged and deleted
    assert readonly_mode(path) == IMMUTABLE
    seen: list[int] = []

    def read(conn: apsw.Connection) -> int:
        count = int(conn.execute("SELECT count(*) FROM shard_meta").fetchall()[0][0])
        if not seen:  # a writer starts while the first read is under way
            writer = open_shard(tmp_path, "a1", ShardConfig())
            writer.execute("INSERT INTO shard_meta VALUES ('late', 'x')")
            writer.close()
        seen.append(count)
        return count

    assert read_file(path, ShardConfig(), read) == 3 and seen == [2, 3]


def test_a_wal_without_its_shm_gets_only_the_shm(tmp_path: Path) -> None:
    """SQLite rebuilds the WAL index only into a -shm it creates: the one file a read-only look may add."""
    from agentshards import inspect_agent

    run_agent(sample_agents.many_steps, agent_id="a1", data_dir=tmp_path, n=2)
    (tmp_path / "a1.db-shm").unlink()
    before = {p.name: _digest(p) for p in tmp_path.iterdir() if p.is_file()}
    assert len(inspect_agent(tmp_path, "a1").runs[0].steps) == 2
    after = {p.name: _digest(p) for p in tmp_path.iterdir() if p.is_file()}
    assert after.pop("a1.db-shm") and after == before

"""A worker killed in the middle of a commit, while Litestream keeps the shard open.

The commit's frames are in the WAL file (Litestream reads them from there and may ship them) but not in
the wal-index; without the fleet's adoption the next worker overwrites them and the replica stops
matching the shard (measured: Litestream's sync of the shard then fails with "read database page 2: EOF"
on every attempt, and the agent ends unsynced).
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import apsw
import pytest

from agentshards import Fleet, SupervisorConfig, inspect_agent, list_fleet, restore_agent
from agentshards._base.config import ShardConfig
from agentshards._core.shard import open_shard, shard_path
from agentshards._core.sqlite import open_connection
from agentshards._core.wal import unpublished_frames

from agent_process import TESTS_DIR


def _torn_commit(data: Path) -> Path:
    """A shard whose last commit is in its WAL file but not in its wal-index, as a killed writer leaves it:
    the wal-index header is put back to what it was before that commit while a second connection (in
    Litestream's place) keeps the shard open."""
    open_shard(data, "t", ShardConfig()).close()
    path = shard_path(data, "t")
    holder = open_connection(path, ShardConfig())  # keeps the wal-index alive, as Litestream does
    writer = open_connection(path, ShardConfig())
    writer.execute("CREATE TABLE scratch(x)")
    writer.execute("INSERT INTO scratch VALUES ('published')")
    shm = Path(f"{path}-shm")
    before = shm.read_bytes()[:136]
    assert unpublished_frames(path) == 0
    writer.execute("INSERT INTO scratch VALUES ('torn')")
    writer.close()
    with open(shm, "r+b") as f:
        f.write(before)
    holder.close()
    return path


def test_unpublished_frames_counts_a_torn_commit_and_nothing_else(tmp_path: Path) -> None:
    assert unpublished_frames(tmp_path / "none.db") == 0  # no files at all
    path = _torn_commit(tmp_path / "d")
    torn = unpublished_frames(path)
    assert torn >= 1  # the commit's frames: at least the table's leaf page
    # SQLite keeps the commit when it rebuilds the index (the first connection to open the shard does):
    conn = open_connection(path, ShardConfig())
    assert conn.execute("SELECT x FROM scratch ORDER BY rowid").fetchall() == [("published",), ("torn",)]
    assert unpublished_frames(path) == 0
    conn.close()


def test_a_damaged_frame_ends_the_count(tmp_path: Path) -> None:
    path = _torn_commit(tmp_path / "d")
    wal = Path(f"{path}-wal")
    data = bytearray(wal.read_bytes())
    data[-1] ^= 0xFF  # the last page of the torn commit no longer matches its checksum
    wal.write_bytes(bytes(data))
    assert unpublished_frames(path) == 0


def test_a_worker_killed_mid_commit_keeps_the_commit_and_the_replica_agrees(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    data, replica = tmp_path / "d", str(tmp_path / "replica")
    log, marker = tmp_path / "steps.log", tmp_path / "armed"
    # A restart later than Litestream's 1 s monitor: the torn commit is shipped before the next worker runs.
    fleet = Fleet(data, replica=replica, app_dir=TESTS_DIR, env=dict(os.environ, TORN_COMMIT_VFS="1"),
                  config=SupervisorConfig(restart_backoff_s=1.5, agents_per_worker=1))
    fleet.launch("torn_agents:torn_once", {"a": {"marker": str(marker), "log": str(log),
                                                 "wal": f"{shard_path(data, 'a')}-wal"}})
    with caplog.at_level(logging.WARNING, logger="agentshards"):
        results = fleet.wait(timeout_s=120)
    assert marker.exists(), "the worker was never armed"
    assert apsw.vfs_names()[0] == "unix"  # the watching VFS lives in the workers only
    assert fleet.status()["a"].restarts == 1
    assert any("killed by SIGKILL" in r.getMessage() for r in caplog.records)
    assert results["a"] == ["first", "second", "third"]
    # The step whose commit was torn ran once: its commit was kept, so the restarted worker replayed it.
    assert log.read_text().split() == ["first", "second", "third"]
    assert any("in the middle of a commit" in r.getMessage() for r in caplog.records)
    assert [(e.agent_id, e.status, e.steps) for e in list_fleet(replica)] == [("a", "succeeded", 3)]
    restore_agent("a", tmp_path / "elsewhere", replica)
    restored, local = inspect_agent(tmp_path / "elsewhere", "a").runs, inspect_agent(data, "a").runs
    assert [(s.name, s.output_json) for s in restored[0].steps] == [(s.name, s.output_json) for s in local[0].steps]
    assert len(restored) == 1 and restored[0].run.status == "succeeded"
    conn = apsw.Connection(str(shard_path(tmp_path / "elsewhere", "a")), flags=apsw.SQLITE_OPEN_READONLY)
    assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    conn.close()
    shutil.rmtree(tmp_path / "elsewhere")

"""Hostile files and environments: each a clear error, the file left untouched, nothing recorded lost."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import apsw
import pytest

from agentshards import RunConfig, ShardConfig, ShardError, inspect_agent, run_agent
from agentshards._core import journal as _journal
from agentshards._core.schema import MIGRATIONS, SCHEMA_VERSION
from agentshards._core.shard import open_shard

import sample_agents


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _shard_with_data(data_dir: Path, agent_id: str = "a1", steps: int = 40) -> Path:
    run_agent(sample_agents.many_steps, agent_id=agent_id, data_dir=data_dir, n=steps)
    path = data_dir / f"{agent_id}.db"
    # The steps are in the WAL (agentshards never checkpoints on close): move them into the file, as
    # Litestream's checkpoints do, so that damaging the file damages recorded steps.
    conn = apsw.Connection(str(path))
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    return path


def test_truncated_file_is_refused_untouched(data_dir: Path) -> None:
    path = _shard_with_data(data_dir)
    size = path.stat().st_size
    assert size > 8 * 4096
    with path.open("r+b") as f:
        f.truncate(size // 2)
    before = _digest(path)
    with pytest.raises(ShardError, match="a1") as info:
        run_agent(sample_agents.many_steps, agent_id="a1", data_dir=data_dir, n=40)
    assert "hint:" in str(info.value)
    assert _digest(path) == before


def test_corrupt_page_is_refused_untouched(data_dir: Path) -> None:
    path = _shard_with_data(data_dir)
    data = bytearray(path.read_bytes())
    for page in range(2, 8):  # b-tree page headers (page type, cell counts): what a torn write leaves
        for offset in range(page * 4096, page * 4096 + 12):
            data[offset] = 0xA5
    path.write_bytes(bytes(data))
    before = _digest(path)
    with pytest.raises(ShardError, match=r"damaged|malformed|corrupt"):
        inspect_agent(data_dir, "a1")
    assert _digest(path) == before


def test_migration_from_v1_keeps_runs_and_resumes(data_dir: Path) -> None:
    data_dir.mkdir()
    conn = apsw.Connection(str(data_dir / "old.db"))
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(MIGRATIONS[0])
    conn.execute("PRAGMA user_version = 1")
    conn.execute("INSERT INTO shard_meta VALUES ('agent_id', 'old'), ('created_at', '0')")
    digest = __import__("agentshards._core.codec", fromlist=["digest"]).digest('{"x":2}')
    conn.execute("INSERT INTO workflows(id, seq, target, input_json, input_digest, status, created_at, updated_at)"
                 " VALUES ('r1', 1, 'sample_agents:two_steps', '{\"x\":2}', ?, 'running', 0, 0)", (digest,))
    conn.execute("INSERT INTO steps(workflow_id, step_name, kind, output_json, completed_at)"
                 " VALUES ('r1', 'double', 'step', '{\"v\":4}', 0)")
    conn.close()
    sample_agents.CALLS.clear()
    result = run_agent(sample_agents.two_steps, agent_id="old", data_dir=data_dir, x=2)
    assert result == {"a": {"v": 4}, "b": {"v": 8}}
    assert sample_agents.CALLS == ["double-again-2"]  # the v1 step replayed, only the second ran
    check = open_shard(data_dir, "old", ShardConfig())
    assert check.execute("PRAGMA user_version").fetchall()[0][0] == SCHEMA_VERSION
    assert {r[1] for r in check.execute("PRAGMA table_info(steps)")} >= {"input_hash", "outcome"}


def test_old_sqlite_is_refused(data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(apsw, "sqlite_lib_version", lambda: "3.51.2")
    with pytest.raises(ShardError, match="WAL-reset") as info:
        run_agent(sample_agents.two_steps, agent_id="v", data_dir=data_dir, x=1)
    assert "pip install -U apsw" in str(info.value)
    assert not data_dir.exists()


@contextlib.contextmanager
def _tmpfs(where: Path, size: str) -> Iterator[Path]:
    where.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {proc.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=True)


def test_disk_full_leaves_the_step_unrecorded_and_earlier_steps_intact(tmp_path: Path) -> None:
    with _tmpfs(tmp_path / "small", "600k") as mnt:
        data_dir = mnt / "data"
        sample_agents.BIG_STEPS.clear()
        with pytest.raises(ShardError) as info:
            run_agent(sample_agents.big_steps, agent_id="full", data_dir=data_dir, n=50)
        message = str(info.value)
        assert "step 'blob#" in message and "free disk space" in message
        recorded = len(sample_agents.BIG_STEPS) - 1  # the last one ran but could not be recorded
        assert recorded > 0
        report = inspect_agent(data_dir, "full").runs[0]
        assert report.run.status == "running" and len(report.steps) == recorded
        # make room and re-run: it resumes where it stopped; nothing recorded was lost
        subprocess.run(["mount", "-o", "remount,size=8m", str(mnt)], check=True)
        sample_agents.BIG_STEPS.clear()
        result = run_agent(sample_agents.big_steps, agent_id="full", data_dir=data_dir, n=50)
        assert result == 50 and len(sample_agents.BIG_STEPS) == 50 - recorded
        conn = apsw.Connection(str(data_dir / "full.db"))
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        conn.close()


def test_read_only_storage_is_a_clear_error(tmp_path: Path) -> None:
    with _tmpfs(tmp_path / "ro", "4m") as mnt:
        data_dir = mnt / "data"
        run_agent(sample_agents.two_steps, agent_id="ro", data_dir=data_dir, x=1)
        before = _digest(data_dir / "ro.db")
        subprocess.run(["mount", "-o", "remount,ro", str(mnt)], check=True)
        try:
            with pytest.raises(ShardError, match="ro") as info:
                run_agent(sample_agents.two_steps, agent_id="ro", data_dir=data_dir, new_run=True, x=2)
            assert "hint:" in str(info.value)
            assert _digest(data_dir / "ro.db") == before
        finally:
            subprocess.run(["mount", "-o", "remount,rw", str(mnt)], check=True)


def test_a_write_lock_held_past_busy_timeout_leaves_the_run_open_to_resume(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Seen at 1,000 agents on 2 cores: Litestream held a shard's lock past busy_timeout. That is the
    # environment failing, not the agent: the run must stay open (not be recorded as failed) and resume.
    monkeypatch.setattr(_journal, "BUSY_RETRIES", 0)  # give up after one busy_timeout (5 s), not three
    sample_agents.LOCKED.clear()
    shard, config = str(tmp_path / "busy.db"), RunConfig(shard=ShardConfig(busy_timeout_ms=5000))  # the minimum
    with pytest.raises(ShardError, match="busy timeout") as info:
        run_agent(sample_agents.write_locked_once, agent_id="busy", data_dir=tmp_path, config=config, shard=shard)
    assert "step 'second'" in str(info.value) and "re-run to resume" in str(info.value)
    report = inspect_agent(tmp_path, "busy").runs[0]
    assert report.run.status == "running" and [s.name for s in report.steps] == ["first"]
    assert run_agent(sample_agents.write_locked_once, agent_id="busy", data_dir=tmp_path, shard=shard) == 3
    assert sample_agents.LOCKED == ["first", "held", "second", "second"]  # "first" replayed, not re-run


def test_a_journal_write_waits_again_when_the_lock_outlasts_one_busy_timeout(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # The write that waits may hold an LLM answer already paid for: one more wait beats paying twice.
    run_agent(sample_agents.two_steps, agent_id="slow", data_dir=tmp_path, x=1)
    journal = _journal.Journal(open_shard(tmp_path, "slow", ShardConfig(busy_timeout_ms=5000)), "slow")
    other = apsw.Connection(str(tmp_path / "slow.db"))
    other.execute("BEGIN IMMEDIATE")
    released = threading.Timer(6.0, lambda: other.execute("ROLLBACK"))  # past one busy timeout, not two
    released.start()
    try:
        run_id = journal.runs()[0].id
        with caplog.at_level(logging.WARNING, logger="agentshards"):
            journal.record_step(run_id, "late", "step", "1")
        assert [s.name for s in journal.steps(run_id)][-1] == "late"
        assert "waiting again (1/2) to record the step" in caplog.text and "slow" in caplog.text
    finally:
        released.join()
        other.close()
        journal.close()


def test_an_older_shard_is_shown_migrated_and_left_as_it_was(data_dir: Path) -> None:
    """Read-only commands do not migrate: they read a migrated copy in memory."""
    from agentshards import spend_report

    data_dir.mkdir()
    conn = apsw.Connection(str(data_dir / "old.db"))
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(MIGRATIONS[0])
    conn.execute("PRAGMA user_version = 1")
    conn.execute("INSERT INTO shard_meta VALUES ('agent_id', 'old'), ('created_at', '0')")
    conn.execute("INSERT INTO workflows(id, seq, target, input_json, input_digest, status, created_at, updated_at)"
                 " VALUES ('r1', 1, 'sample_agents:two_steps', '{}', 'd', 'running', 0, 0)")
    conn.execute("INSERT INTO steps(workflow_id, step_name, kind, output_json, completed_at)"
                 " VALUES ('r1', 'double', 'step', '{\"v\":4}', 0)")
    conn.close()
    before = {p.name: _digest(p) for p in data_dir.iterdir() if p.is_file()}
    report = inspect_agent(data_dir, "old")
    assert [(r.run.id, [s.name for s in r.steps]) for r in report.runs] == [("r1", ["double"])]
    assert spend_report(data_dir).agents["old"].calls == 0
    assert {p.name: _digest(p) for p in data_dir.iterdir() if p.is_file()} == before

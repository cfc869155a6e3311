"""Archive: one verified object per finished agent, local files removed last, a kill at any stage loses nothing."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from agentshards import (
    ReplicationError,
    ShardError,
    archive_agent,
    delete_agent,
    expire_archives,
    fetch_archive,
    inspect_agent,
    list_archives,
    list_fleet,
    query_fleet,
    run_agent,
    spend_report,
)
from agentshards._base.crashpoints import ARCHIVE_POINTS
from agentshards._fleet.views import FleetView
from agentshards._replication.objectstore import store_for
from agentshards._replication.replica import parse_replica

import sample_agents
from agent_process import TESTS_DIR


def test_archive_fetch_inspect(tmp_path: Path, replica: str) -> None:
    data = tmp_path / "d"
    run_agent(sample_agents.local_steps, agent_id="done", data_dir=data, replica=replica, n=5, size=500)
    entry = archive_agent("done", data, replica)
    target = parse_replica(replica, os.environ)
    store = store_for(target, os.environ)
    blob, meta = store.get_with_metadata(entry.key)
    assert hashlib.sha256(blob).hexdigest() == entry.sha256 == meta["sha256"]
    assert (meta["agent-id"], meta["status"], meta["steps"]) == ("done", "succeeded", "5")
    assert store.list(target.agent_key("done") + "/") == []  # live replica objects deleted
    assert not list(data.glob("done.db*")) and not (data / ".done.db-litestream").exists()
    (archived,) = list_archives(replica)
    assert (archived.agent_id, archived.status, archived.archive_sha256) == ("done", "archived", entry.sha256)
    assert [e.status for e in list_fleet(replica)] == ["archived"]
    fetched = fetch_archive("done", tmp_path / "look", replica)
    report = inspect_agent(tmp_path / "look", "done")
    assert fetched.exists() and report.runs[0].run.status == "succeeded" and len(report.runs[0].steps) == 5


def test_unfinished_agents_are_not_archived(tmp_path: Path) -> None:
    from agentshards import RunConfig
    from agentshards._core.journal import Journal
    from agentshards._core.shard import open_shard

    journal = Journal(open_shard(tmp_path / "d", "busy", RunConfig().shard), "busy")
    journal.begin_run("sample_agents:two_steps", '{"x":9}', "d")  # an open run, as a crashed agent leaves it
    journal.close()
    with pytest.raises(ShardError, match="not finished"):
        archive_agent("busy", tmp_path / "d", str(tmp_path / "r"))
    assert (tmp_path / "d" / "busy.db").exists()


ARCHIVER = """
import sys
from agentshards._replication.archive import archive_agent
archive_agent(sys.argv[1], sys.argv[2], sys.argv[3], crash_plan=sys.argv[4])
"""


@pytest.mark.parametrize("point", ARCHIVE_POINTS)
def test_a_kill_at_any_archive_stage_loses_nothing(tmp_path: Path, point: str) -> None:
    data, replica = tmp_path / "d", str(tmp_path / "r")
    run_agent(sample_agents.local_steps, agent_id="k", data_dir=data, replica=replica, n=4)
    proc = subprocess.run([sys.executable, "-c", ARCHIVER, "k", str(data), replica, f"{point}@1"],
                          env=dict(os.environ, PYTHONPATH=str(TESTS_DIR)), capture_output=True, timeout=60)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    # the local shard is still there and whole: it goes only after the archive is verified and published
    assert len(inspect_agent(data, "k").runs[0].steps) == 4
    entry = archive_agent("k", data, replica)  # running it again finishes the job
    assert not (data / "k.db").exists()
    assert len(inspect_agent(Path(fetch_archive("k", tmp_path / "back", replica)).parent, "k").runs[0].steps) == 4
    assert entry.steps == 4


def test_tampered_archive_is_rejected(tmp_path: Path) -> None:
    data, replica = tmp_path / "d", str(tmp_path / "r")
    run_agent(sample_agents.local_steps, agent_id="t", data_dir=data, replica=replica, n=2)
    entry = archive_agent("t", data, replica)
    archived = Path(replica) / entry.key
    archived.write_bytes(archived.read_bytes()[:-100] + b"x" * 100)
    with pytest.raises(ShardError, match="sha256"):
        fetch_archive("t", tmp_path / "back", replica)
    assert not (tmp_path / "back" / "t.db").exists()
    with pytest.raises(ReplicationError, match="no archive for agent ghost"):
        fetch_archive("ghost", tmp_path / "back", replica)


def test_retention_and_delete_everywhere(tmp_path: Path) -> None:
    data, replica = tmp_path / "d", str(tmp_path / "r")
    for agent_id in ("old", "keep"):
        run_agent(sample_agents.local_steps, agent_id=agent_id, data_dir=data, replica=replica, n=1)
    archive_agent("old", data, replica)
    assert expire_archives(replica, 30) == []  # archived just now
    assert expire_archives(replica, 30, now=__import__("time").time() + 31 * 86400) == ["old"]
    assert list_archives(replica) == []
    assert sorted(delete_agent("keep", data, replica)) == ["local shard", "manifest", "replica"]
    assert not (data / "keep.db").exists() and list_fleet(replica) == []


def test_a_failed_archive_leaves_no_copy_behind(tmp_path: Path) -> None:
    data, replica = tmp_path / "d", tmp_path / "r"
    run_agent(sample_agents.local_steps, agent_id="f", data_dir=data, replica=str(replica), n=2)
    (replica / "archive").write_text("in the way")  # the upload cannot create its folder
    with pytest.raises(FileExistsError):
        archive_agent("f", data, str(replica))
    assert not (data / ".archive" / "f.db").exists()
    assert len(inspect_agent(data, "f").runs[0].steps) == 2  # the shard itself is untouched


def test_a_leftover_fetch_file_breaks_no_scan_and_goes_on_the_next_fetch(tmp_path: Path) -> None:
    data, replica = tmp_path / "d", str(tmp_path / "r")
    run_agent(sample_agents.local_steps, agent_id="kept", data_dir=data, replica=replica, n=2)
    run_agent(sample_agents.local_steps, agent_id="away", data_dir=data, replica=replica, n=1)
    archive_agent("away", data, replica)
    (data / ".fetch-away.db").write_bytes(b"the first bytes of a fetch that was killed")
    view = FleetView(data)
    try:
        assert [a["agent_id"] for a in view.snapshot()["agents"]] == ["kept"]
    finally:
        view.close()
    assert list(spend_report(data).agents) == ["kept"]
    assert query_fleet(data, "SELECT count(*) FROM steps").rows == [("kept", 2)]
    fetch_archive("away", data, replica)
    assert not (data / ".fetch-away.db").exists()
    assert len(inspect_agent(data, "away").runs[0].steps) == 1

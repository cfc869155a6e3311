"""The data-dir lock (one owner runs a data dir's Litestream) and the agent lock (one run of an agent at a time),
with real processes holding them; commands that change shards refuse beside a live owner."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from agentshards import (
    DataDirLocked,
    FakeLLMServer,
    LLMConfig,
    RunConfig,
    archive_agent,
    delete_agent,
    fetch_archive,
    fork_run,
    inspect_agent,
    restore_agent,
    run_agent,
)
from agentshards._base.errors import AgentLocked
from agentshards._fleet.run import start_replication

import sample_agents
from agent_process import spawn_chat_agent, wait_ready


def _alive(pid: int) -> bool:
    return Path(f"/proc/{pid}").exists() and "zombie" not in Path(f"/proc/{pid}/status").read_text().lower()


def _poll(condition: Callable[[], bool], what: str, deadline_s: float = 30.0) -> None:
    end = time.monotonic() + deadline_s
    while not condition():
        assert time.monotonic() < end, f"timed out waiting for {what}"
        time.sleep(0.02)


@pytest.fixture
def slow_llm() -> Iterator[FakeLLMServer]:
    with FakeLLMServer(delay_s=0.25) as server:
        yield server


def _stop(proc: subprocess.Popen[str], litestream_pid: int | None) -> None:
    """SIGKILL the owner; its Litestream goes with it (parent-death signal): wait until it has."""
    proc.kill()
    proc.communicate(timeout=30)
    if litestream_pid is not None:
        _poll(lambda: not _alive(litestream_pid), "the owner's litestream to exit")


def _owner(data: Path, replica: str, llm: FakeLLMServer) -> tuple[subprocess.Popen[str], int]:
    """A run_agent with a replica in a child process, slowed by the LLM: it owns ``data`` for seconds."""
    proc = spawn_chat_agent(data, llm.base_url, "owner", 40, {"TEST_REPLICA": replica})
    wait_ready(proc)
    pid_file = data / "litestream.pid"
    _poll(lambda: pid_file.exists() and pid_file.read_text().strip() != "" and llm.request_count > 0,
          "the owner to start litestream and its run")
    return proc, int(pid_file.read_text())


def test_a_second_owner_is_refused_and_the_first_litestream_lives(tmp_path: Path, slow_llm: FakeLLMServer) -> None:
    data, replica = tmp_path / "d", str(tmp_path / "r")
    proc, litestream_pid = _owner(data, replica, slow_llm)
    try:
        with pytest.raises(DataDirLocked, match=f"pid {proc.pid}") as refused:
            run_agent(sample_agents.local_steps, agent_id="second", data_dir=data, replica=replica, n=1)
        assert refused.value.pid == proc.pid and refused.value.agent_id == "second"
        with pytest.raises(DataDirLocked, match=f"pid {proc.pid}"):  # only the owner may stop a leftover
            start_replication(data, replica, RunConfig(), os.environ)
        assert _alive(litestream_pid), "the owner's litestream was killed"
        assert int((data / "litestream.pid").read_text()) == litestream_pid
        assert not (data / "second.db").exists()
    finally:
        _stop(proc, litestream_pid)


def test_two_runs_of_one_agent_the_second_is_refused_and_pays_nothing(tmp_path: Path,
                                                                        slow_llm: FakeLLMServer) -> None:
    data = tmp_path / "d"
    first = spawn_chat_agent(data, slow_llm.base_url, "a", 4)
    wait_ready(first)
    _poll(lambda: slow_llm.request_count > 0, "the first run's first request")
    config = RunConfig(llm=LLMConfig(api_key="test-key", base_url=slow_llm.base_url))
    with pytest.raises(AgentLocked, match=f"pid {first.pid}") as refused:
        run_agent(sample_agents.chat_calls, agent_id="a", data_dir=data, config=config, n=4)
    assert refused.value.pid == first.pid
    out, _ = first.communicate(timeout=60)
    assert first.returncode == 0, out
    assert slow_llm.request_count == 4  # one request per call: the refused run sent none
    # the lock goes with its run: the agent runs again (replaying, so still no request)
    assert len(run_agent(sample_agents.chat_calls, agent_id="a", data_dir=data, config=config, n=4)) == 4
    assert slow_llm.request_count == 4


def test_commands_that_change_shards_refuse_beside_a_live_owner(tmp_path: Path, slow_llm: FakeLLMServer) -> None:
    data, replica = tmp_path / "d", str(tmp_path / "r")
    run_agent(sample_agents.local_steps, agent_id="done", data_dir=data, replica=replica, n=2)
    run_agent(sample_agents.local_steps, agent_id="gone", data_dir=data, replica=replica, n=1)
    archive_agent("gone", data, replica)
    before = (data / "done.db").read_bytes()
    proc, litestream_pid = _owner(data, replica, slow_llm)
    try:
        calls: dict[str, Callable[[], object]] = {  # the ones that only add come first
            "fork": lambda: fork_run("done", data, at_step=1),
            "fetch": lambda: fetch_archive("gone", data, replica),
            "restore --overwrite": lambda: restore_agent("done", data, replica, overwrite=True),
            "archive": lambda: archive_agent("done", data, replica),
            "delete": lambda: delete_agent("done", data, replica),
        }
        ran = []
        for name, call in calls.items():
            try:
                call()
                ran.append(name)
            except DataDirLocked as exc:
                assert exc.pid == proc.pid, name
        assert ran == [], "ran beside a live owner"
        assert (data / "done.db").read_bytes() == before and not (data / "gone.db").exists()
        assert _alive(litestream_pid)
    finally:
        _stop(proc, litestream_pid)
    assert len(inspect_agent(data, "done").runs) == 1  # no fork was made


RESTORER = """
import sys
from agentshards._replication.restore import restore_agent
restore_agent(sys.argv[1], sys.argv[2], sys.argv[3], overwrite=True, crash_plan=sys.argv[4])
"""


def test_a_kill_during_restore_overwrite_leaves_the_old_shard_whole(tmp_path: Path, fake_llm: FakeLLMServer) -> None:
    data, replica = tmp_path / "d", str(tmp_path / "r")
    # the replica holds one version of "r" (from another node), this node another, most of it in its WAL
    run_agent(sample_agents.local_steps, agent_id="r", data_dir=tmp_path / "other", replica=replica, n=1)
    crashed = spawn_chat_agent(data, fake_llm.base_url, "r", 6, {"AGENTSHARDS_TEST_CRASH": "after_commit@3"})
    crashed.communicate(timeout=60)
    assert crashed.returncode == -signal.SIGKILL
    assert Path(f"{data / 'r.db'}-wal").stat().st_size > 0, "the local steps should be in the WAL"

    proc = subprocess.run([sys.executable, "-c", RESTORER, "r", str(data), replica, "restore_moved_aside@1"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == -signal.SIGKILL, proc.stderr

    def runs() -> list[tuple[str, int]]:
        return [(r.run.target, len(r.steps)) for r in inspect_agent(data, "r").runs]

    assert runs() == [("sample_agents:chat_calls", 3)]  # the old shard with its WAL: all three recorded calls
    restore_agent("r", data, replica, overwrite=True)  # a second attempt replaces it
    assert runs() == [("sample_agents:local_steps", 1)]
    assert sorted(p.name for p in data.iterdir() if "r.db" in p.name) == ["r.db"]

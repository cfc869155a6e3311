"""Published states: an ending only with a confirmed sync, no swallowed manifest write, and one agent's
failure (to restore, to launch, to finalise, to survive its restarts) never stops the others.

Real Litestream, real worker processes, the loopback S3 server (moto), faults from the loopback proxy.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agentshards import (
    AgentFailed,
    Fleet,
    InvalidTarget,
    LitestreamConfig,
    ReplicationError,
    RunConfig,
    SupervisorConfig,
    inspect_agent,
    list_fleet,
    recover,
    retry_agent,
    run_agent,
)
from agentshards._base.errors import ReplicaNotRestorable
from agentshards._replication.manifest import ManifestEntry, write_manifest
from agentshards._replication.objectstore import store_for
from agentshards._replication.replica import parse_replica
from agentshards._replication.states import GAVE_UP, UNSYNCED, is_unfinished, published

import state_agents
from agent_process import TESTS_DIR
from fault_proxy import FaultProxy

CLI = [sys.executable, "-m", "agentshards"]


def _states(replica: str, env: dict[str, str]) -> list[tuple[str, str]]:
    return [(e.agent_id, e.status) for e in list_fleet(replica, env=env)]


def _cli(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=120)


def test_the_published_state_follows_the_journal_and_the_sync() -> None:
    assert published("succeeded", synced=True) == "succeeded"
    assert [published(s, synced=False) for s in ("succeeded", "failed", "budget_exceeded", "cancelled")] == [
        UNSYNCED] * 4
    assert published("running", synced=True, gave_up=True) == GAVE_UP  # an open run never reads as an ending
    assert published(None, synced=False) == "running"
    assert [s for s in ("running", UNSYNCED, GAVE_UP, "succeeded", "failed", "archived", "from-a-newer-version")
            if is_unfinished(s)] == ["running", UNSYNCED, GAVE_UP, "from-a-newer-version"]


def test_an_ending_the_replica_lacks_is_published_unsynced_and_recovered(
        tmp_path: Path, s3_env: dict[str, str], bucket: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """run_agent: Litestream dies after the last replicated step, so the final sync cannot confirm the end.
    The manifest says unsynced (not succeeded); restore --all and recover on a fresh node take the agent."""
    for key, value in s3_env.items():
        monkeypatch.setenv(key, value)
    replica, node1 = f"s3://{bucket}/fleet", tmp_path / "node1"
    assert run_agent(state_agents.halts_litestream, agent_id="u", data_dir=node1, replica=replica,
                     pid_file=str(node1 / "litestream.pid"), how="SIGKILL", confirm=True) == "done"
    assert _states(replica, s3_env) == [("u", UNSYNCED)]
    shutil.rmtree(node1)  # the node is gone, and with it the only copy of the run's end

    listed = _cli("restore", "--all", "--replica", replica, "--data-dir", "node3", env=s3_env, cwd=tmp_path)
    assert listed.returncode == 0 and "u: restored to" in listed.stdout, listed.stderr
    (run,) = inspect_agent(tmp_path / "node3", "u").runs
    assert run.run.status == "running" and [s.name for s in run.steps] == ["first"]  # the end never got there

    assert recover(tmp_path / "node2", replica, app_dir=TESTS_DIR, env=s3_env) == {"u": "done"}
    assert _states(replica, s3_env) == [("u", "succeeded")]
    (run,) = inspect_agent(tmp_path / "node2", "u").runs
    assert run.run.status == "succeeded" and [s.name for s in run.steps] == ["first"]


def test_a_fleet_publishes_unsynced_when_the_final_sync_times_out(tmp_path: Path, s3_env: dict[str, str],
                                                                 bucket: str) -> None:
    """The fleet's finalisation: Litestream is stopped (SIGSTOP) when the agent ends, its final sync times
    out, and the entry says unsynced (recovering such an entry: the test above)."""
    replica, node1 = f"s3://{bucket}/fleet", tmp_path / "node1"
    quick = RunConfig(litestream=LitestreamConfig(sync_timeout_s=1.0, stop_timeout_s=1.0))
    fleet = Fleet(node1, replica, app_dir=TESTS_DIR, run_config=quick, env=s3_env)
    fleet.launch("state_agents:halts_litestream", {"f": {"pid_file": str(node1 / "litestream.pid"),
                                                         "how": "SIGSTOP", "confirm": False}})
    assert fleet.wait(timeout_s=120) == {"f": "done"}
    assert _states(replica, s3_env) == [("f", UNSYNCED)]
    assert fleet._replication is None and inspect_agent(node1, "f").runs[-1].run.status == "succeeded"


def test_a_launch_whose_manifest_write_fails_fails_that_agent_only(tmp_path: Path, moto_endpoint: str,
                                                                   s3_env: dict[str, str], bucket: str) -> None:
    """S3 answers 5xx to the manifest PUT of one agent: that agent is not started (a fresh node could not
    find it), its outcome is a ReplicationError naming it; the agent launched before it runs."""
    proxy = FaultProxy(int(moto_endpoint.rsplit(":", 1)[1]))
    try:
        env = dict(s3_env, AWS_ENDPOINT_URL_S3=proxy.endpoint)
        replica = f"s3://{bucket}/fleet"
        fleet = Fleet(tmp_path / "d", replica, app_dir=TESTS_DIR, env=env)
        fleet.launch("sample_agents:two_steps", {"ok": {"x": 1}})
        proxy.errors(1.0, only="/manifest/refused.json")
        fleet.launch("sample_agents:two_steps", {"refused": {"x": 2}})
        results = fleet.wait(timeout_s=120)
    finally:
        proxy.close()
    assert results["ok"]["b"] == {"v": 4}
    error = results["refused"]
    assert isinstance(error, ReplicationError) and error.agent_id == "refused"
    assert "manifest" in error.message and error.hint
    assert not (tmp_path / "d" / "refused.db").exists()  # never started: refused before its shard was made
    assert _states(replica, s3_env) == [("ok", "succeeded")]


def test_run_agent_fails_when_its_manifest_entry_cannot_be_written(tmp_path: Path) -> None:
    replica = tmp_path / "replica"
    replica.mkdir()
    (replica / "manifest").write_text("a file where the manifest directory goes")
    with pytest.raises(ReplicationError, match="could not write its manifest entry") as info:
        run_agent(state_agents.sleeps, agent_id="m", data_dir=tmp_path / "d", replica=str(replica), seconds=0)
    assert info.value.agent_id == "m"
    assert not (tmp_path / "d" / "m.db").exists()  # refused before its shard was made: nothing of it ran


def test_one_agent_that_cannot_be_recovered_does_not_stop_the_others(tmp_path: Path, s3_env: dict[str, str],
                                                                     bucket: str) -> None:
    replica = f"s3://{bucket}/fleet"
    target = parse_replica(replica, s3_env)
    store = store_for(target, s3_env)

    def entry(agent_id: str, status: str = "running", fn: str = "sample_agents:two_steps",
              inputs: str | None = '{"x":1}') -> None:
        write_manifest(store, target, ManifestEntry(agent_id, status, fn, "-", "", None, 0, time.time(),
                                                    inputs_json=inputs))

    entry("good")  # never reached the replica: starts over from its manifest entry
    entry("damaged", inputs='{"x":2}')
    store.put(target.agent_key("damaged") + "/0009/0000000000000001-0000000000000001.ltx", b"LTX1" + bytes(60))
    entry("no-inputs", inputs=None)
    entry("alien", fn="no_such_module_here:agent")
    entry("finished", status="succeeded")
    results = recover(tmp_path / "node2", replica, app_dir=TESTS_DIR, env=s3_env)
    assert sorted(results) == ["alien", "damaged", "good", "no-inputs"]
    assert results["good"]["b"] == {"v": 4}
    assert isinstance(results["damaged"], ReplicaNotRestorable) and results["damaged"].agent_id == "damaged"
    assert isinstance(results["no-inputs"], ReplicationError) and results["no-inputs"].agent_id == "no-inputs"
    assert isinstance(results["alien"], InvalidTarget)
    assert dict(_states(replica, s3_env)) == {"alien": "running", "damaged": "running", "finished": "succeeded",
                                              "good": "succeeded", "no-inputs": "running"}

    again = _cli("recover", "--replica", replica, "--data-dir", "node3", "--app-dir", str(TESTS_DIR), env=s3_env,
                 cwd=tmp_path)
    assert again.returncode == 1 and "0 agents finished ok, 3 failed" in again.stdout, again.stderr
    assert "Traceback" not in again.stderr
    assert all(f"{agent_id}: FAILED agent '{agent_id}'" in again.stderr for agent_id in ("damaged", "no-inputs"))


def test_a_failed_finalisation_is_that_agents_outcome_and_the_fleet_goes_on(
        tmp_path: Path, moto_endpoint: str, s3_env: dict[str, str], bucket: str) -> None:
    """S3 answers 5xx to one agent's archive upload: that agent's outcome says so (its shard stays, its
    entry says succeeded), and the fleet runs the other agent to the end and archives it."""
    from agentshards import list_archives

    proxy = FaultProxy(int(moto_endpoint.rsplit(":", 1)[1]))
    try:
        env = dict(s3_env, AWS_ENDPOINT_URL_S3=proxy.endpoint)
        replica = f"s3://{bucket}/fleet"
        proxy.errors(1.0, only="/archive/quick.db")
        fleet = Fleet(tmp_path / "d", replica, app_dir=TESTS_DIR, env=env, archive_finished=True,
                      agents_per_worker=1)
        fleet.launch("state_agents:sleeps", {"quick": {"seconds": 0}, "slow": {"seconds": 3}})
        results = fleet.wait(timeout_s=120)
    finally:
        proxy.close()
    assert results["slow"] == "rested"
    error = results["quick"]
    assert isinstance(error, ReplicationError) and error.agent_id == "quick" and "archiving it" in error.message
    assert "agentshards archive quick" in (error.hint or "")
    assert (tmp_path / "d" / "quick.db").exists()  # nothing removed locally
    assert [e.agent_id for e in list_archives(replica, env=s3_env)] == ["slow"]
    assert dict(_states(replica, s3_env)) == {"quick": "succeeded", "slow": "archived"}


def test_an_agent_past_its_restart_limit_is_published_gave_up_and_recover_and_retry_take_it(
        tmp_path: Path, s3_env: dict[str, str], bucket: str) -> None:
    replica, node1, marker = f"s3://{bucket}/fleet", tmp_path / "node1", tmp_path / "crashing"
    marker.touch()
    fleet = Fleet(node1, replica, app_dir=TESTS_DIR, env=s3_env,
                  config=SupervisorConfig(max_restarts=1, restart_backoff_s=0.01))
    fleet.launch("state_agents:dies_while", {"g": {"marker": str(marker)}})
    results = fleet.wait(timeout_s=120)
    assert isinstance(results["g"], AgentFailed) and results["g"].error_type == "RestartLimit"
    assert fleet.status()["g"].status == GAVE_UP
    assert _states(replica, s3_env) == [("g", GAVE_UP)]
    assert inspect_agent(node1, "g").runs[-1].run.status == "running"  # given up on, not ended
    marker.unlink()  # the cause is fixed

    listed = _cli("restore", "--all", "--replica", replica, "--data-dir", "node3", env=s3_env, cwd=tmp_path)
    assert listed.returncode == 0 and "g: restored to" in listed.stdout, listed.stderr
    assert recover(tmp_path / "node2", replica, app_dir=TESTS_DIR, env=s3_env) == {"g": "alive"}
    assert _states(replica, s3_env) == [("g", "succeeded")]

    assert retry_agent("g", node1, app_dir=TESTS_DIR) == "alive"  # the node that gave up resumes the open run too
    (run,) = inspect_agent(node1, "g").runs
    assert run.run.status == "succeeded" and [s.name for s in run.steps] == ["before"]


"""The fleet supervisor with real worker processes, a real fake-LLM server and real SIGKILLs."""

from __future__ import annotations

import os
import random
import signal
import sys
import threading
import time
from pathlib import Path

import pytest

from agentshards import (
    AgentFailed,
    DataDirLocked,
    FakeLLMServer,
    Fleet,
    InvalidAgentId,
    InvalidInputs,
    InvalidTarget,
    SupervisorConfig,
    inspect_agent,
    list_fleet,
    restore_agent,
)
from agentshards.testing._fakellm import serial_of

from agent_process import TESTS_DIR


@pytest.fixture
def llm_env(monkeypatch: pytest.MonkeyPatch) -> FakeLLMServer:
    server = FakeLLMServer(delay_s=0.03).start()
    monkeypatch.setenv("OPENAI_API_KEY", "test-key")
    monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
    yield server  # type: ignore[misc]
    server.stop()


def _alive(pid: int) -> bool:
    try:
        return "zombie" not in Path(f"/proc/{pid}/status").read_text().lower()
    except OSError:
        return False


def test_fleet_survives_worker_kills_without_repeating_a_call(tmp_path: Path, llm_env: FakeLLMServer) -> None:
    agents = {f"agent-{i:03d}": {"n": 10} for i in range(20)}
    fleet = Fleet(tmp_path / "fleet", agents_per_worker=5, concurrency=20, app_dir=TESTS_DIR,
                  config=SupervisorConfig(agents_per_worker=5, concurrency=20, restart_backoff_s=0.05))
    fleet.launch("sample_agents:chat_calls", agents)
    rng = random.Random(42)
    killed: list[int] = []
    seen: set[int] = set()

    def killer() -> None:
        deadline = time.monotonic() + 60
        while len(killed) < 3 and time.monotonic() < deadline:
            if llm_env.request_count >= 30 + 40 * len(killed):
                pids = [p for p in fleet.worker_pids() if p not in killed]
                if pids:
                    pid = rng.choice(pids)
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)
            seen.update(fleet.worker_pids())
            time.sleep(0.01)

    thread = threading.Thread(target=killer)
    thread.start()
    results = fleet.wait(timeout_s=240)
    thread.join()
    assert len(killed) == 3
    assert all(not isinstance(r, Exception) for r in results.values()), results
    states = fleet.status()
    assert sum(s.restarts for s in states.values()) >= 3  # every agent of a killed worker was restarted
    log = llm_env.requests
    for agent_id, result in results.items():
        assert [r["i"] for r in result] == list(range(10))
        for entry in result:
            serial = serial_of(entry["id"])
            key = (agent_id, f"call {entry['i']} of 10")
            assert (log[serial - 1].body["user"], log[serial - 1].body["messages"][0]["content"]) == key
            # once this agent's call was answered and recorded, nobody asked for it again
            later = [r.serial for r in log if r.serial > serial
                     and (r.body["user"], r.body["messages"][0]["content"]) == key]
            assert later == [], f"{agent_id} paid again for call {entry['i']}: {later}"
    recorded = sorted(serial_of(e["id"]) for result in results.values() for e in result)
    assert len(recorded) == 200 and len(set(recorded)) == 200
    assert len(log) - 200 <= 3 * 5  # at most one in-flight request per agent of each killed worker
    print(f"\n3 workers SIGKILLed, {sum(s.restarts for s in states.values())} agent restarts, "
          f"{len(log) - 200} in-flight requests repeated, 0 completed calls repeated", file=sys.stderr)
    assert not [pid for pid in seen | set(killed) if _alive(pid)], "a worker outlived the fleet"


def test_restart_limit_marks_the_agent_failed_with_the_reason(tmp_path: Path) -> None:
    fleet = Fleet(tmp_path / "d", app_dir=TESTS_DIR,
                  config=SupervisorConfig(max_restarts=2, restart_backoff_s=0.01))
    fleet.launch("sample_agents:dies_hard", {"doomed": {}})
    results = fleet.wait(timeout_s=120)
    error = results["doomed"]
    assert isinstance(error, AgentFailed)
    assert "gave up after 2 restarts" in str(error) and "SIGKILL" in str(error)
    assert fleet.status()["doomed"].restarts == 2
    # the step before the crash ran once: later attempts replayed it from the shard
    assert [s.name for s in inspect_agent(tmp_path / "d", "doomed").runs[0].steps] == ["before"]


def test_agent_failures_are_final_not_restarted(tmp_path: Path) -> None:
    fleet = Fleet(tmp_path / "d", app_dir=TESTS_DIR, config=SupervisorConfig(restart_backoff_s=0.01))
    fleet.launch("sample_agents:fails_cleanly", {"f1": {"message": "bad input"}})
    results = fleet.wait(timeout_s=60)
    assert isinstance(results["f1"], AgentFailed) and "bad input" in str(results["f1"])
    assert fleet.status()["f1"].restarts == 0


def test_one_supervisor_per_data_dir(tmp_path: Path) -> None:
    first = Fleet(tmp_path / "d", app_dir=TESTS_DIR)
    first.launch("sample_agents:two_steps", {"a": {"x": 1}})
    try:
        second = Fleet(tmp_path / "d", app_dir=TESTS_DIR)
        with pytest.raises(DataDirLocked, match=f"pid {os.getpid()}"):
            second.launch("sample_agents:two_steps", {"b": {"x": 1}})
    finally:
        first.close()
    again = Fleet(tmp_path / "d", app_dir=TESTS_DIR)  # released: the next supervisor may start
    again.launch("sample_agents:two_steps", {"a": {"x": 1}})
    assert again.wait(timeout_s=60)["a"]["a"] == {"v": 2}


def test_bad_input_is_refused_before_anything_starts(tmp_path: Path) -> None:
    fleet = Fleet(tmp_path / "d", app_dir=TESTS_DIR)
    with pytest.raises(InvalidTarget, match="cannot import"):
        fleet.launch("no_such_module_here:agent", {"a": {}})
    with pytest.raises(InvalidAgentId):
        fleet.launch("sample_agents:two_steps", {"../up": {"x": 1}})
    with pytest.raises(InvalidInputs, match="does not accept"):
        fleet.launch("sample_agents:two_steps", {"a": {"y": 1}})
    assert not (tmp_path / "d").exists()


def test_fleet_replicates_and_publishes_the_manifest(tmp_path: Path) -> None:
    replica = str(tmp_path / "replica")
    fleet = Fleet(tmp_path / "d", replica=replica, app_dir=TESTS_DIR, agents_per_worker=2)
    fleet.launch("sample_agents:two_steps", {f"r{i}": {"x": i} for i in range(3)})
    results = fleet.wait(timeout_s=120)
    assert [results[f"r{i}"]["b"]["v"] for i in range(3)] == [0, 4, 8]
    assert [(e.agent_id, e.status, e.steps) for e in list_fleet(replica)] == [
        ("r0", "succeeded", 2), ("r1", "succeeded", 2), ("r2", "succeeded", 2)]
    assert not (tmp_path / "d" / "litestream.pid").exists()
    # replicated: another node restores each agent's shard from the replica alone, every step in it
    for i in range(3):
        restore_agent(f"r{i}", tmp_path / "elsewhere", replica)
        (run,) = inspect_agent(tmp_path / "elsewhere", f"r{i}").runs
        assert run.run.status == "succeeded" and len(run.steps) == 2
        assert [(s.name, s.output_json) for s in run.steps] == [
            (s.name, s.output_json) for s in inspect_agent(tmp_path / "d", f"r{i}").runs[0].steps]


def test_workers_do_not_get_the_aws_secret(tmp_path: Path, s3_env: dict[str, str], bucket: str,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in s3_env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("OPENAI_API_KEY", "k")
    fleet = Fleet(tmp_path / "d", replica=f"s3://{bucket}/f", app_dir=TESTS_DIR)
    fleet.launch("sample_agents:env_probe", {"probe": {}})
    seen = fleet.wait(timeout_s=60)["probe"]
    assert seen == {"AWS_SECRET_ACCESS_KEY": False, "AWS_ACCESS_KEY_ID": False, "OPENAI_API_KEY": True}
    secret = s3_env["AWS_SECRET_ACCESS_KEY"].encode()
    for path in (tmp_path / "d").rglob("*"):
        if path.is_file():
            assert secret not in path.read_bytes(), path


def test_each_agent_has_its_own_log(tmp_path: Path) -> None:
    fleet = Fleet(tmp_path / "d", app_dir=TESTS_DIR, agents_per_worker=2)
    fleet.launch("sample_agents:fails_cleanly", {"l1": {"message": "first problem"}, "l2": {"message": "second"}})
    fleet.wait(timeout_s=60)
    one = (tmp_path / "d" / ".fleet" / "logs" / "l1.log").read_text()
    two = (tmp_path / "d" / ".fleet" / "logs" / "l2.log").read_text()
    assert "first problem" in one and "first problem" not in two and "second" in two


def test_archive_finished_agents_automatically(tmp_path: Path) -> None:
    from agentshards import list_archives

    replica = str(tmp_path / "r")
    fleet = Fleet(tmp_path / "d", replica=replica, app_dir=TESTS_DIR, archive_finished=True)
    fleet.launch("sample_agents:two_steps", {"z1": {"x": 1}, "z2": {"x": 2}})
    results = fleet.wait(timeout_s=120)
    assert results["z2"]["b"] == {"v": 8}
    assert sorted(e.agent_id for e in list_archives(replica)) == ["z1", "z2"]
    assert not list((tmp_path / "d").glob("*.db"))


def test_unusable_replica_fails_before_any_worker_starts(tmp_path: Path, s3_env: dict[str, str],
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from agentshards import InvalidReplica

    for key, value in s3_env.items():
        monkeypatch.setenv(key, value)
    fleet = Fleet(tmp_path / "d", replica="s3://no-such-bucket-anywhere/x", app_dir=TESTS_DIR)
    with pytest.raises(InvalidReplica, match="create the bucket"):
        fleet.launch("sample_agents:two_steps", {"a": {"x": 1}})
    again = Fleet(tmp_path / "d", app_dir=TESTS_DIR)  # the lock was released on the way out
    again.launch("sample_agents:two_steps", {"a": {"x": 1}})
    assert again.wait(timeout_s=60)["a"]["a"] == {"v": 2}


def test_sigterm_stops_the_fleet_cleanly(tmp_path: Path, llm_env: FakeLLMServer) -> None:
    import json
    import subprocess

    llm_env.delay_s = 0.2
    inputs = tmp_path / "agents.jsonl"
    inputs.write_text("".join(json.dumps({"agent_id": f"s{i}", "inputs": {"n": 10}}) + "\n" for i in range(3)))
    supervisor = subprocess.Popen([sys.executable, "-m", "agentshards", "run", "sample_agents:chat_calls", "--inputs",
                                   str(inputs), "--data-dir", str(tmp_path / "d"), "--replica", str(tmp_path / "r"),
                                   "--app-dir", str(TESTS_DIR)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True)
    deadline = time.monotonic() + 60
    while llm_env.request_count < 2:
        assert time.monotonic() < deadline and supervisor.poll() is None, supervisor.stderr
        time.sleep(0.01)
    status = json.loads((tmp_path / "d" / ".fleet" / "status.json").read_text())
    children = [a["worker_pid"] for a in status["agents"].values() if a["worker_pid"]]
    children.append(int((tmp_path / "d" / "litestream.pid").read_text()))
    supervisor.send_signal(signal.SIGTERM)
    _, err = supervisor.communicate(timeout=60)
    assert supervisor.returncode == 130 and "resume when they are launched again" in err
    assert not [pid for pid in children if _alive(pid)]
    assert not (tmp_path / "d" / "litestream.pid").exists()  # Litestream stopped (after its final sync)
    llm_env.delay_s = 0.0
    fleet = Fleet(tmp_path / "d", app_dir=TESTS_DIR)  # lock released; the agents resume where they stopped
    fleet.launch("sample_agents:chat_calls", {f"s{i}": {"n": 10} for i in range(3)})
    results = fleet.wait(timeout_s=120)
    assert all(len(r) == 10 for r in results.values())
    assert llm_env.request_count <= 30 + 3  # at most the three calls in flight at the SIGTERM were paid twice


def test_recover_starts_over_an_agent_that_never_reached_the_replica(tmp_path: Path) -> None:
    """Killed before Litestream's first upload: the manifest (written at launch, with the inputs) is all a
    fresh node has; recovery starts that agent from the beginning instead of failing every agent."""
    from agentshards import recover
    from agentshards._replication.manifest import ManifestEntry, write_manifest
    from agentshards._replication.objectstore import store_for
    from agentshards._replication.replica import parse_replica

    replica = str(tmp_path / "replica")
    fleet = Fleet(tmp_path / "a", replica=replica, app_dir=TESTS_DIR)
    fleet.launch("sample_agents:two_steps", {"kept": {"x": 1}})
    assert fleet.wait(timeout_s=120)["kept"]["b"]["v"] == 4
    (entry,) = list_fleet(replica)
    assert entry.inputs_json == '{"x":1}'
    target = parse_replica(replica, os.environ)
    store = store_for(target, os.environ)
    write_manifest(store, target, ManifestEntry(  # as launch publishes it: "running", no replica files yet
        agent_id="ghost", status="running", target="sample_agents:two_steps", input_digest="-", run_id="",
        code_fingerprint=None, steps=0, updated_at=time.time(), inputs_json='{"x":3}'))
    results = recover(tmp_path / "b", replica, take_over=True, app_dir=TESTS_DIR, lease_ttl_s=1)
    assert results["ghost"]["b"]["v"] == 12 and "kept" not in results
    assert [(e.agent_id, e.status) for e in list_fleet(replica)] == [("ghost", "succeeded"), ("kept", "succeeded")]


def test_a_finished_agent_stops_being_replicated_once_its_replica_is_complete(tmp_path: Path) -> None:
    """Litestream LISTs every registered replica once per interval even when idle: finished agents leave."""
    fleet = Fleet(tmp_path / "d", replica=str(tmp_path / "replica"), app_dir=TESTS_DIR, concurrency=2)
    fleet.launch("sample_agents:two_steps", {"quick": {"x": 1}})
    fleet.launch("sample_agents:slow_step", {"slow": {"seconds": 30.0, "timeout_s": 60.0}})
    ended: list[BaseException] = []

    def run() -> None:
        try:
            fleet.wait(timeout_s=5.0)  # the slow agent is still running then: wait() ends with a timeout
        except Exception as exc:
            ended.append(exc)

    runner = threading.Thread(target=run)
    runner.start()
    try:
        deadline = time.monotonic() + 30
        while "quick" in fleet._replication.litestream.registered:
            assert time.monotonic() < deadline, "the finished agent is still registered with Litestream"
            time.sleep(0.05)
        assert "slow" in fleet._replication.litestream.registered
        assert [(e.agent_id, e.status) for e in list_fleet(str(tmp_path / "replica"))] == [
            ("quick", "succeeded"), ("slow", "running")]
    finally:
        runner.join()
    assert len(ended) == 1 and isinstance(ended[0], TimeoutError)


def _ppid(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def test_workers_are_forked_from_one_zygote_and_a_killed_zygote_costs_only_restarts(
        tmp_path: Path, llm_env: FakeLLMServer) -> None:
    # Workers fork from one preloaded process (shared memory); if that process dies, its workers die
    # with it, the supervisor restarts their agents on a new zygote, and no completed call is repeated.
    agents = {f"z-{i:02d}": {"n": 10} for i in range(6)}
    fleet = Fleet(tmp_path / "fleet", app_dir=TESTS_DIR,
                  config=SupervisorConfig(agents_per_worker=2, concurrency=6, restart_backoff_s=0.05))
    fleet.launch("sample_agents:chat_calls", agents)
    outcome: dict[str, object] = {}
    runner = threading.Thread(target=lambda: outcome.update(fleet.wait(timeout_s=180)))
    runner.start()
    deadline = time.monotonic() + 60
    while (len(fleet.worker_pids()) < 3 or llm_env.request_count < 12) and time.monotonic() < deadline:
        time.sleep(0.01)
    workers = fleet.worker_pids()
    zygotes = {_ppid(pid) for pid in workers}
    assert len(workers) == 3 and len(zygotes) == 1
    (zygote,) = zygotes
    assert zygote != os.getpid() and _ppid(zygote) == os.getpid()
    os.kill(zygote, signal.SIGKILL)
    while any(_alive(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not any(_alive(pid) for pid in workers)  # the workers died with their zygote
    runner.join()
    assert all(not isinstance(r, Exception) for r in outcome.values()), outcome
    assert sum(s.restarts for s in fleet.status().values()) == 6
    log = llm_env.requests
    for agent_id, result in outcome.items():
        assert [r["i"] for r in result] == list(range(10))  # type: ignore[attr-defined]
        for entry in result:  # type: ignore[attr-defined]
            key = (agent_id, f"call {entry['i']} of 10")
            later = [r.serial for r in log if r.serial > serial_of(entry["id"])
                     and (r.body["user"], r.body["messages"][0]["content"]) == key]
            assert later == [], f"{agent_id} paid again for call {entry['i']}: {later}"
    assert len(log) <= 60 + 6  # at most the one call in flight per agent was sent twice


def test_the_stall_watchdog_thread_survives_a_failing_check_and_stops_with_the_fleet(tmp_path: Path) -> None:
    # The watchdog runs beside the supervisor loop (a slow Litestream must not stall the loop); one failed
    # check must not end it, and close() must end it.
    fleet = Fleet(tmp_path / "d", app_dir=TESTS_DIR)
    calls: list[float] = []

    class Replication:
        def restart_if_stalled(self) -> bool:
            calls.append(time.monotonic())
            if len(calls) == 1:
                raise OSError("control socket refused")
            return False

    fleet._watchdog = threading.Thread(target=fleet._watch, args=(Replication(),), daemon=True)
    fleet._watchdog.start()
    deadline = time.monotonic() + 10
    while len(calls) < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(calls) >= 3  # it went on after the failure
    watchdog = fleet._watchdog
    fleet.close()
    assert fleet._watchdog is None
    assert not watchdog.is_alive()  # and stopped with the fleet: no check can follow

"""``replicated`` steps inside fleet workers (confirmed by their supervisor) and the workers' own lease fence,
with real worker processes, real Litestream, loopback S3 and real signals."""

from __future__ import annotations

import json
import os
import signal
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import apsw
import pytest

from agentshards import (
    FakeLLMServer,
    Fleet,
    LeaseError,
    ReplicationError,
    RunConfig,
    inspect_agent,
    restore_agent,
)
from agentshards._base.config import ShardConfig, litestream_owned
from agentshards._base.errors import Fenced
from agentshards._core import fence
from agentshards._core.shard import open_shard
from agentshards._core.sqlite import write_transaction
from agentshards._fleet.confirm import confirm_socket_for
from agentshards._fleet.fence_file import DeadlineFence, DeadlineWriter
from agentshards._fleet.run import start_replication
from agentshards._replication.lease import Lease, LeaseConfig
from agentshards._replication.lease_keeper import LeaseKeeper
from agentshards._replication.litestream import SyncResult
from agentshards._replication.objectstore import LocalStore
from agentshards._replication.replica import ReplicaTarget
from agentshards._replication.replication import Replication

from agent_process import TESTS_DIR
from fault_proxy import FaultProxy


def test_a_replicated_step_in_a_fleet_worker_is_in_the_replica_before_it_returns(tmp_path: Path) -> None:
    replica = str(tmp_path / "replica")
    fleet = Fleet(tmp_path / "d", replica=replica, app_dir=TESTS_DIR, agents_per_worker=2)
    fleet.launch("confirm_agents:replicated_then_restored",
                 {f"a{i}": {"n": 3, "source": replica, "scratch": str(tmp_path / "scratch")} for i in range(2)})
    results = fleet.wait(timeout_s=120)
    for agent_id in ("a0", "a1"):
        # restored from the replica inside the worker right after each step returned: every step was there
        assert results[agent_id] == [["rep"], ["rep", "rep#2"], ["rep", "rep#2", "rep#3"]], results[agent_id]
        (run,) = inspect_agent(tmp_path / "d", agent_id).runs
        assert all(step.replicated_at is not None for step in run.steps)  # the journal records the confirmation


@pytest.mark.parametrize("llm_durability", [None, "replicated"])
def test_fleet_workers_take_the_fleets_llm_durability(tmp_path: Path, llm_durability: str | None) -> None:
    with FakeLLMServer() as llm:
        env = dict(os.environ, OPENAI_API_KEY="k", OPENAI_BASE_URL=llm.base_url)
        fleet = Fleet(tmp_path / "d", str(tmp_path / "replica"), app_dir=TESTS_DIR, env=env,
                      run_config=RunConfig(llm_durability=llm_durability))  # type: ignore[arg-type]
        fleet.launch("confirm_agents:llm_and_plain", {"l1": {}})
        assert isinstance(fleet.wait(timeout_s=120)["l1"], str)
    (run,) = inspect_agent(tmp_path / "d", "l1").runs
    confirmed = {s.name: s.replicated_at is not None for s in run.steps}
    assert confirmed == {"llm#1": llm_durability == "replicated", "plain": False}  # LLM steps only; local by default


def test_a_failed_confirmation_reaches_the_agent_as_a_replication_error(
        tmp_path: Path, moto_endpoint: str, s3_env: dict[str, str], bucket: str) -> None:
    proxy = FaultProxy(int(moto_endpoint.rsplit(":", 1)[1]))
    fleet = Fleet(tmp_path / "d", f"s3://{bucket}/fleet", app_dir=TESTS_DIR,
                  env=dict(s3_env, AWS_ENDPOINT_URL_S3=proxy.endpoint),
                  run_config=RunConfig(replication_timeout_s=2.0))
    outcome: dict[str, Any] = {}
    try:
        fleet.launch("confirm_agents:replicated_error", {"e1": {}})  # live on its generation: workers start in wait()
        proxy.errors(1.0, only=f"/{bucket}/fleet/agents/")  # no upload of any shard lands; the lease is untouched
        runner = threading.Thread(target=lambda: outcome.update(fleet.wait(timeout_s=120)))
        runner.start()
        result_file = tmp_path / "d" / ".fleet" / "results" / "e1.json"
        deadline = time.monotonic() + 60
        while not result_file.exists() and runner.is_alive():
            assert time.monotonic() < deadline, "the agent never ended"
            time.sleep(0.05)
        proxy.errors(0.0)  # let the fleet's final sync and manifest through
        runner.join()
    finally:
        fleet.close()
        proxy.close()
    assert outcome["e1"]["type"] == "ReplicationError", outcome
    assert outcome["e1"]["agent_id"] == "e1"
    (run,) = inspect_agent(tmp_path / "d", "e1").runs
    assert [(s.name, s.replicated_at) for s in run.steps] == [("rep", None)]  # recorded, never confirmed


def test_workers_confirm_through_the_supervisor_without_any_aws_credential(
        tmp_path: Path, s3_env: dict[str, str], bucket: str) -> None:
    replica = f"s3://{bucket}/fleet"
    fleet = Fleet(tmp_path / "d", replica, app_dir=TESTS_DIR, env=s3_env)
    fleet.launch("confirm_agents:environ_then_replicated", {"w1": {"n": 2}})
    result = fleet.wait(timeout_s=120)["w1"]
    assert result == {"aws": [], "canary": []}, result  # the secret is "testing-secret-canary"
    (run,) = inspect_agent(tmp_path / "d", "w1").runs
    assert [s.replicated_at is not None for s in run.steps] == [True, True]
    restore_agent("w1", tmp_path / "elsewhere", replica, env=s3_env)
    (restored,) = inspect_agent(tmp_path / "elsewhere", "w1").runs
    assert [s.name for s in restored.steps] == ["rep", "rep#2"]


SUPERVISOR = """
import json, sys
from agentshards import Fleet, LeaseError
args = json.loads(sys.argv[1])
fleet = Fleet(args["data_dir"], args["replica"], app_dir=args["app_dir"], env=args["env"], lease_ttl_s=args["ttl"])
fleet.launch("confirm_agents:ticking", {"t1": {"n": 100000, "pause_s": 0.01}})
try:
    fleet.wait(timeout_s=120)
except LeaseError as exc:
    print("fenced:", type(exc).__name__, exc.message, flush=True)
    sys.exit(3)
print("not fenced", flush=True)
"""


def _steps(shard: Path) -> tuple[int, float, list[str]]:
    conn = apsw.Connection(f"file:{shard}?mode=ro", flags=apsw.SQLITE_OPEN_READONLY | apsw.SQLITE_OPEN_URI)
    conn.set_busy_timeout(5000)  # Litestream checkpoints the shard meanwhile
    try:
        if not conn.execute("SELECT 1 FROM sqlite_schema WHERE name = 'steps'").fetchall():
            return 0, 0.0, []  # the file exists, its schema is being created: no step yet
        count, last = next(conn.execute("SELECT COUNT(*), COALESCE(MAX(completed_at), 0) FROM steps"))
        statuses = [row[0] for row in conn.execute("SELECT status FROM workflows")]
    finally:
        conn.close()
    return int(count), float(last), statuses


def test_workers_of_a_paused_supervisor_stop_committing_at_its_lease_deadline(
        tmp_path: Path, s3_env: dict[str, str], bucket: str) -> None:
    ttl = 3.0
    data_dir = tmp_path / "d"
    args = {"data_dir": str(data_dir), "replica": f"s3://{bucket}/fleet", "app_dir": str(TESTS_DIR), "env": s3_env,
            "ttl": ttl}
    proc = subprocess.Popen([sys.executable, "-c", SUPERVISOR, json.dumps(args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=dict(s3_env, PYTHONPATH=os.pathsep.join(sys.path)))
    shard, fence_file = data_dir / "t1.db", data_dir / ".fleet" / "lease-deadline"
    try:
        deadline = time.monotonic() + 60
        while not shard.exists() or _steps(shard)[0] < 20:
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read() if proc.stderr else ""
            time.sleep(0.05)
        worker_log = data_dir / ".fleet" / "logs" / "t1.log"
        proc.send_signal(signal.SIGSTOP)  # the supervisor alone: its zygote, workers and Litestream run on
        stopped_at, wall_stopped = time.monotonic(), time.time()
        fence_at = struct.unpack("<dd", fence_file.read_bytes())[0]  # its last renewal's deadline (monotonic)
        assert stopped_at < fence_at <= stopped_at + ttl
        wall_fence = time.time() - (time.monotonic() - fence_at)
        while time.monotonic() < fence_at + 1.0:
            time.sleep(0.05)
        count, last, statuses = _steps(shard)
        time.sleep(1.5)
        assert _steps(shard) == (count, last, statuses)  # nothing more committed, with the supervisor still paused
        assert wall_stopped < last <= wall_fence + 0.05  # steps went on after the pause, until the deadline only
        assert statuses == ["running"]  # no run end recorded
        assert not (data_dir / ".fleet" / "results" / "t1.json").exists()
        assert "t1: Fenced: " in worker_log.read_text()  # the worker stopped itself: not killed by anyone
        proc.send_signal(signal.SIGCONT)
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 3, (out, err[-3000:])  # the supervisor fenced itself as soon as it ran again
        assert out.startswith("fenced: LeaseError"), out
        assert _steps(shard) == (count, last, statuses)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGCONT)
            proc.kill()
            proc.wait()


def test_a_lease_keeper_woken_past_its_deadline_fences_instead_of_renewing(tmp_path: Path) -> None:
    """A paused process wakes with both keeper threads due: the renewal must not win the race and carry on
    a node whose workers stopped at the deadline (and whose prefix another node may have taken)."""
    jump = [0.0]
    lease = Lease(LocalStore(tmp_path), ReplicaTarget("file", root=tmp_path), LeaseConfig(1.2, 0.3), owner="n",
                  clock=lambda: time.monotonic() + jump[0])
    keeper = LeaseKeeper(lease)
    fenced: list[LeaseError] = []
    deadlines: list[float] = []
    keeper.add_fence(fenced.append)
    keeper.acquire()
    try:
        keeper.add_renewal_listener(deadlines.append)
        assert deadlines == [lease.deadline()]  # the current deadline at once: workers start fenced by it
        renewed = time.monotonic() + 5
        while len(deadlines) < 2:  # the next renewal moves it forward
            assert time.monotonic() < renewed, "no renewal reached the listener"
            time.sleep(0.01)
        assert deadlines[1] > deadlines[0]
        seq = lease.seq
        jump[0] = 5.0  # as if the process had been stopped for 5 s: the renewal thread wakes first
        waited = time.monotonic() + 0.6  # the next renewal is due 0.4 s after the last; the old deadline later
        while not fenced:
            assert time.monotonic() < waited, "woken past its deadline, the keeper renewed instead of fencing"
            time.sleep(0.01)
        assert lease.seq == seq  # nothing written after the deadline
    finally:
        keeper.release()


def test_the_worker_fence_refuses_commits_past_the_deadline_and_rolls_them_back(tmp_path: Path) -> None:
    writer = DeadlineWriter(tmp_path / "lease-deadline")
    check = DeadlineFence(tmp_path / "lease-deadline")
    conn = open_shard(tmp_path, "f1", ShardConfig())
    fence.install(check)
    try:
        with pytest.raises(Fenced):  # before the first deadline is written: fenced, never a stale file's
            check("f1")
        writer.write(time.monotonic() + 60)
        with write_transaction(conn):
            conn.execute("CREATE TABLE t(x)")
        writer.write(time.monotonic() - 0.001)
        with pytest.raises(Fenced) as caught, write_transaction(conn):
            conn.execute("INSERT INTO t VALUES (1)")
        assert not conn.in_transaction
        assert list(conn.execute("SELECT COUNT(*) FROM t")) == [(0,)]  # rolled back, not committed
        assert caught.value.hint is not None
    finally:
        fence.install(None)
        conn.close()
        writer.close()
    fence.check("f1")  # nothing installed: a no-op


def test_one_agents_stuck_confirmation_does_not_hold_up_anothers(
        tmp_path: Path, moto_endpoint: str, s3_env: dict[str, str], bucket: str) -> None:
    """A fleet's supervisor confirms many agents' steps at once: each waits for its own sync only."""
    proxy = FaultProxy(int(moto_endpoint.rsplit(":", 1)[1]))
    config = litestream_owned(RunConfig())
    replication = start_replication(tmp_path / "d", f"s3://{bucket}/r", config,
                                    dict(s3_env, AWS_ENDPOINT_URL_S3=proxy.endpoint))
    shards = {a: open_shard(tmp_path / "d", a, config.shard) for a in ("stuck", "fast")}
    try:
        for agent_id, conn in shards.items():
            replication.litestream.register(agent_id)
            with write_transaction(conn):
                conn.execute("CREATE TABLE t(x)")
            replication.confirm(agent_id, 20.0)  # both replicas healthy, snapshots checked
        proxy.errors(1.0, only=f"/{bucket}/r/agents/stuck/")  # nothing of "stuck" reaches the replica now
        for conn in shards.values():
            with write_transaction(conn):
                conn.execute("INSERT INTO t VALUES (1)")
        stuck: list[BaseException] = []

        def confirm_stuck() -> None:
            try:
                replication.confirm("stuck", 4.0)
            except ReplicationError as exc:
                stuck.append(exc)

        waiting = threading.Thread(target=confirm_stuck)
        waiting.start()
        deadline = time.monotonic() + 10
        while proxy.injected == 0:  # its sync has begun: its upload was refused
            assert time.monotonic() < deadline, "the stuck agent's sync never reached S3"
            time.sleep(0.01)
        started = time.monotonic()
        replication.confirm("fast", 20.0)
        took = time.monotonic() - started
        waiting.join()
        assert took < 2.0, f"the other agent's confirmation waited {took:.1f}s behind the stuck one"
        assert len(stuck) == 1 and stuck[0].agent_id == "stuck"
    finally:
        proxy.errors(0.0)  # Litestream's shutdown sync goes through
        for conn in shards.values():
            conn.close()
        replication.litestream.stop()
        proxy.close()


class _RacingLitestream:
    """Answers syncs as Litestream did in a busy fleet: "replica behind" while its own monitor's upload of the
    shard is still under way, caught up once asked again."""

    config = RunConfig().litestream

    def __init__(self, answers: list[SyncResult]) -> None:
        self.answers, self.calls = answers, 0
        self.registered: list[str] = []

    def ensure_running(self) -> bool:
        return True

    def databases(self, timeout_s: float = 10.0) -> list[dict[str, Any]]:
        return []

    def sync(self, agent_id: str, timeout_s: float | None = None) -> SyncResult:
        self.calls += 1
        return self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]


def test_a_sync_that_finds_the_replica_behind_is_asked_again_until_the_deadline(tmp_path: Path) -> None:
    racing = _RacingLitestream([SyncResult(18, 17), SyncResult(18, 18)])
    replication = Replication(racing, LocalStore(tmp_path), ReplicaTarget("file", root=tmp_path))  # type: ignore[arg-type]
    replication._healthy_at["a"] = time.monotonic()  # its snapshot was checked: only the sync is under test
    replication.confirm("a", 5.0)
    assert racing.calls == 2
    behind = _RacingLitestream([SyncResult(18, 17)])  # never catches up: fails at the deadline, not before
    replication = Replication(behind, LocalStore(tmp_path), ReplicaTarget("file", root=tmp_path))  # type: ignore[arg-type]
    replication._healthy_at["a"] = time.monotonic()
    started = time.monotonic()
    with pytest.raises(ReplicationError, match="replica at txid 17, local at 18"):
        replication.confirm("a", 0.3)
    assert 0.25 < time.monotonic() - started < 2.0 and behind.calls > 2


def test_the_confirmation_socket_of_a_deep_data_dir_fits_a_unix_socket_path(tmp_path: Path) -> None:
    assert confirm_socket_for(tmp_path / ".fleet") == tmp_path / ".fleet" / "confirm.sock"
    deep = tmp_path / ("d" * 120) / ".fleet"
    path = confirm_socket_for(deep)
    assert len(str(path).encode()) < 108 and path != confirm_socket_for(tmp_path / ("e" * 120) / ".fleet")

"""Replication and restore with a real Litestream process, against a local directory and S3 (moto)."""

from __future__ import annotations

import logging
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import apsw
import boto3
import pytest

from agentshards import (
    FakeLLMServer,
    InvalidReplica,
    LitestreamConfig,
    ReplicationError,
    RunConfig,
    ShardError,
    inspect_agent,
    list_fleet,
    restore_agent,
    run_agent,
)
from agentshards._base.errors import ReplicaNotRestorable
from agentshards._core.locks import AGENT_LOCKS, DATA_DIR_LOCK
from agentshards._replication.litestream import Litestream, socket_path_for
from agentshards._replication.replica import parse_replica
from agentshards.testing._fakellm import serial_of

import sample_agents
from agent_process import completed_steps, finish_and_check, spawn_chat_agent, wait_ready
from fault_proxy import FaultProxy


@pytest.fixture(autouse=True)
def _reset() -> None:
    sample_agents.HOOKS.clear()
    sample_agents.CALLS.clear()


def _pids_alive(pid: int) -> bool:
    return Path(f"/proc/{pid}").exists() and "zombie" not in Path(f"/proc/{pid}/status").read_text().lower()


def test_replicate_restore_resume(tmp_path: Path, replica: str) -> None:
    """Replicated steps survive the loss of the data dir; the restored agent resumes and finishes."""
    sample_agents.CALLS.clear()
    first = tmp_path / "node1"
    with pytest.raises(KeyboardInterrupt):
        run_agent(sample_agents.replicated_then_interrupt, agent_id="r1", data_dir=first, replica=replica, n=4)
    steps = inspect_agent(first, "r1").runs[0].steps
    assert len(steps) == 3 and all(s.replicated_at is not None for s in steps)
    assert not list(first.glob("litestream.pid")), "litestream was not stopped"
    shutil.rmtree(first)  # node loss

    (entry,) = list_fleet(replica)
    assert (entry.agent_id, entry.status, entry.steps) == ("r1", "running", 0)
    second = tmp_path / "node2"
    path = restore_agent("r1", second, replica)
    assert path == second / "r1.db"
    assert [s.name for s in inspect_agent(second, "r1").runs[0].steps] == ["rep", "rep#2", "rep#3"]
    sample_agents.CALLS.clear()
    result = run_agent(sample_agents.replicated_then_interrupt, agent_id="r1", data_dir=second, replica=replica, n=4)
    assert sample_agents.CALLS == ["rep-3"]  # the three replicated steps were not executed again
    assert [r["tag"] for r in result] == ["rep-0", "rep-1", "rep-2", "rep-3"]
    (entry,) = list_fleet(replica)
    assert (entry.status, entry.steps) == ("succeeded", 4)

    # restore -> write -> wipe -> restore again: the writes made after the first restore are there
    shutil.rmtree(second)
    third = tmp_path / "node3"
    restore_agent("r1", third, replica)
    assert inspect_agent(third, "r1").runs[0].run.status == "succeeded"
    assert len(inspect_agent(third, "r1").runs[0].steps) == 4


def test_restore_never_overwrites_or_leaves_partial_files(tmp_path: Path, replica: str) -> None:
    run_agent(sample_agents.local_steps, agent_id="a", data_dir=tmp_path / "n1", replica=replica, n=3)
    target = tmp_path / "n2"
    restore_agent("a", target, replica)
    before = (target / "a.db").read_bytes()
    with pytest.raises(ShardError, match="already exists"):
        restore_agent("a", target, replica)
    assert (target / "a.db").read_bytes() == before
    restore_agent("a", target, replica, overwrite=True)
    with pytest.raises(ReplicationError, match="no replica for agent ghost"):
        restore_agent("ghost", target, replica)
    # no temp dirs, no partial files: the shard and the lock files the overwrite held
    assert sorted(p.name for p in target.iterdir()) == sorted(["a.db", DATA_DIR_LOCK, AGENT_LOCKS])


def test_tampered_and_foreign_replicas_are_rejected(tmp_path: Path) -> None:
    replica = tmp_path / "replica"
    run_agent(sample_agents.local_steps, agent_id="a", data_dir=tmp_path / "n1", replica=str(replica), n=50,
              size=2000)
    # Another agent's file placed under b's prefix: a valid SQLite file, but not b's shard.
    shutil.copytree(replica / "agents" / "a" / "g1", replica / "agents" / "b")  # a's live generation
    with pytest.raises(ShardError, match="belongs to agent 'a'"):
        restore_agent("b", tmp_path / "n2", str(replica))
    # Flipped bytes in the replica's LTX files: rejected, nothing written at the final path.
    for ltx in (replica / "agents" / "a").rglob("*.ltx"):
        data = bytearray(ltx.read_bytes())
        for i in range(200, min(len(data), 4000), 7):
            data[i] ^= 0xFF
        ltx.write_bytes(bytes(data))
    with pytest.raises(ReplicaNotRestorable, match="could not restore it either"):
        restore_agent("a", tmp_path / "n3", str(replica))
    assert not (tmp_path / "n3" / "a.db").exists()


def test_missing_bucket_fails_before_any_agent_starts(tmp_path: Path, s3_env: dict[str, str],
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in s3_env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(InvalidReplica, match="create the bucket"):
        run_agent(sample_agents.local_steps, agent_id="a", data_dir=tmp_path / "d", replica="s3://absent-bucket/x",
                  n=1)
    assert not (tmp_path / "d").exists()


def test_replicated_steps_need_a_replica(tmp_path: Path) -> None:
    with pytest.raises(ReplicationError, match="needs a replica"):
        run_agent(sample_agents.replicated_steps, agent_id="a", data_dir=tmp_path, n=1)


def test_bucket_wiped_while_running_is_detected_and_repaired(tmp_path: Path, s3_env: dict[str, str], bucket: str,
                                                             monkeypatch: pytest.MonkeyPatch,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    for key, value in s3_env.items():
        monkeypatch.setenv(key, value)
    replica = f"s3://{bucket}/fleet"
    s3 = boto3.client("s3", endpoint_url=s3_env["AWS_ENDPOINT_URL_S3"], region_name="us-east-1")

    def wipe(i: int) -> None:
        if i == 2:
            for obj in s3.list_objects_v2(Bucket=bucket).get("Contents", []):
                s3.delete_object(Bucket=bucket, Key=obj["Key"])

    sample_agents.HOOKS["between"] = wipe
    config = RunConfig(litestream=LitestreamConfig(health_check_interval_s=0))
    try:
        with caplog.at_level(logging.WARNING, logger="agentshards"):
            run_agent(sample_agents.replicated_steps, agent_id="w", data_dir=tmp_path / "n1", replica=replica,
                      config=config, n=4)
    finally:
        sample_agents.HOOKS.clear()
    assert "has no snapshot" in caplog.text
    shutil.rmtree(tmp_path / "n1")
    restore_agent("w", tmp_path / "n2", replica)
    assert len(inspect_agent(tmp_path / "n2", "w").runs[0].steps) == 4


def test_litestream_killed_while_writing_catches_up(tmp_path: Path) -> None:
    """SIGKILL Litestream while the agent writes past SQLite's autocheckpoint; after restart the replica matches."""
    from agentshards._core.journal import Journal
    from agentshards._core.shard import open_shard
    from agentshards._fleet.run import start_replication

    data, replica = tmp_path / "data", str(tmp_path / "replica")
    replication = start_replication(data, replica, RunConfig(), os.environ)
    try:
        journal = Journal(open_shard(data, "k", RunConfig().shard), "k")
        replication.litestream.register("k")
        run = journal.begin_run("m:f", "{}", "d")
        blob = '"' + "x" * 3000 + '"'
        for i in range(1600):  # ~5 MB: more than the 1000-page autocheckpoint
            if i == 400:
                pid = replication.litestream.pid
                assert pid is not None
                os.kill(pid, signal.SIGKILL)
            journal.record_step(run.id, f"s{i}", "step", blob)
        assert replication.litestream.ensure_running()
        replication.confirm("k", 30)
        journal.close()
    finally:
        replication.litestream.stop()
    restore_agent("k", tmp_path / "restored", replica)
    conn = apsw.Connection(str(tmp_path / "restored" / "k.db"))
    assert conn.execute("SELECT count(*) FROM steps").fetchall() == [(1600,)]
    assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]


OWNER = """
import os, sys, time
from collections.abc import Iterator
from pathlib import Path
from agentshards._fleet.run import start_replication
from agentshards import RunConfig
replication = start_replication(Path(sys.argv[1]), sys.argv[2], RunConfig(), os.environ)
print(replication.litestream.pid, flush=True)
time.sleep(600)
"""


def test_litestream_does_not_outlive_a_killed_owner(tmp_path: Path) -> None:
    owner = subprocess.Popen([sys.executable, "-c", OWNER, str(tmp_path / "d"), str(tmp_path / "r")],
                             stdout=subprocess.PIPE, text=True)
    assert owner.stdout is not None
    pid = int(owner.stdout.readline())
    assert _pids_alive(pid)
    owner.kill()
    owner.wait()
    deadline = time.monotonic() + 10
    while _pids_alive(pid):
        assert time.monotonic() < deadline, "litestream outlived its owner"
        time.sleep(0.02)


def test_leftover_litestream_is_stopped_before_a_second_one_starts(tmp_path: Path) -> None:
    data = tmp_path / "d"
    first = Litestream(data, parse_replica(str(tmp_path / "r")), LitestreamConfig(), os.environ)
    first.start()
    leftover = first.pid
    assert leftover is not None
    first._proc = None  # forget it, as a killed owner would
    second = Litestream(data, parse_replica(str(tmp_path / "r")), LitestreamConfig(), os.environ)
    second.start()
    try:
        assert not _pids_alive(leftover)
        assert second.pid != leftover
    finally:
        second.stop()


def test_socket_path_stays_short_for_long_data_dirs(tmp_path: Path) -> None:
    deep = tmp_path / ("very-long-directory-name-" * 6) / "data"
    assert len(str(deep / "litestream.sock")) > 108
    assert len(str(socket_path_for(deep))) <= 100
    run_agent(sample_agents.local_steps, agent_id="a", data_dir=deep, replica=str(tmp_path / "r"), n=2)
    restore_agent("a", tmp_path / "back", str(tmp_path / "r"))


def test_secrets_stay_out_of_files_and_logs(tmp_path: Path, replica: str) -> None:
    secret = os.environ.get("AWS_SECRET_ACCESS_KEY", "not-set")
    run_agent(sample_agents.local_steps, agent_id="a", data_dir=tmp_path / "d", replica=replica, n=2)
    config = tmp_path / "d" / "litestream.yml"
    assert oct(config.stat().st_mode & 0o777) == "0o600"
    if replica.startswith("s3://"):
        assert secret == "testing-secret-canary"
        for path in (tmp_path / "d").rglob("*"):
            if path.is_file():
                assert secret.encode() not in path.read_bytes(), path


def test_node_loss_with_replicated_llm_steps(tmp_path: Path, s3_env: dict[str, str], bucket: str) -> None:
    """SIGKILL the agent and its Litestream mid-run, wipe the node, restore elsewhere, finish.

    Steps confirmed `replicated` are never re-executed; repeats are bounded by what was only local.
    """
    replica = f"s3://{bucket}/nodeloss"
    env = {k: v for k, v in s3_env.items() if k.startswith("AWS_")}
    env.update(TEST_REPLICA=replica, TEST_DURABILITY="replicated", TEST_LEASE_TTL="2")
    rng = random.Random(7)
    calls = 8
    node1 = tmp_path / "node1"
    with FakeLLMServer(delay_s=0.02) as llm:
        proc = spawn_chat_agent(node1, llm.base_url, "nl", calls, env)
        wait_ready(proc)
        target = rng.randint(3, 5)
        deadline = time.monotonic() + 60
        while llm.request_count < target:
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.005)
        litestream_pid = int((node1 / "litestream.pid").read_text())
        proc.send_signal(signal.SIGKILL)
        os.kill(litestream_pid, signal.SIGKILL)
        proc.wait()
        local = inspect_agent(node1, "nl").runs[0].steps
        confirmed = {s.name for s in local if s.replicated_at is not None}
        shutil.rmtree(node1)

        node2 = tmp_path / "node2"
        restore_agent("nl", node2, replica, env=s3_env)
        restored = {s.name for s in inspect_agent(node2, "nl").runs[0].steps}
        assert confirmed <= restored
        before = llm.request_count
        # the killed process's prefix lease is still there: the new node takes it over once unchanged for TTL+margin
        result, _ = finish_and_check(node2, llm, "nl", calls, dict(env, TEST_TAKE_OVER="1"))
        repeats = (llm.request_count - before) - (calls - len(restored))
        print(f"\nlocal steps at kill {len(local)}, confirmed {len(confirmed)}, restored {len(restored)}, "
              f"requests on resume {llm.request_count - before}", file=sys.stderr)
        assert repeats <= 0  # nothing restored was requested again; only never-recorded calls were sent
        restored_serials = {serial_of(r["id"]) for r in result[: len(restored)]}
        assert all(s <= before for s in restored_serials)
    assert completed_steps(node2, "nl") == calls


def test_s3_outage_loses_nothing_and_replication_catches_up(tmp_path: Path, moto_endpoint: str,
                                                            s3_env: dict[str, str], bucket: str,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """S3 refuses connections for ~10 s while the agent keeps writing; afterwards a replicated step
    confirms and a restore holds every step."""
    port = int(moto_endpoint.rsplit(":", 1)[1])
    proxy = FaultProxy(port)
    try:
        for key, value in dict(s3_env, AWS_ENDPOINT_URL_S3=proxy.endpoint).items():
            monkeypatch.setenv(key, value)
        replica = f"s3://{bucket}/outage"

        def outage(i: int) -> None:
            if i == 5:
                through_proxy.append(proxy.requests)
                proxy.outage()
            if i == 25:
                remaining = 10 - (time.monotonic() - outage_began[0])
                time.sleep(max(0.0, remaining))  # the outage lasts 10 s
                proxy.resume()
                through_proxy.append(proxy.requests)
            if i == 5:
                outage_began.append(time.monotonic())

        outage_began: list[float] = []
        through_proxy: list[int] = []  # S3 requests forwarded when the outage began, when it ended
        sample_agents.HOOKS["between"] = outage
        config = RunConfig(replication_timeout_s=90)
        result = run_agent(sample_agents.outage_steps, agent_id="o", data_dir=tmp_path / "n1", replica=replica,
                           config=config, n=30)
        assert result == 30
        # replication went through the refusing proxy: uploads before the outage, and the catch-up after it
        assert through_proxy[0] > 0 and proxy.requests > through_proxy[1], (through_proxy, proxy.requests)
        print(f"\nS3 refused connections for 10 s; the final replicated step confirmed "
              f"{time.monotonic() - outage_began[0] - 10:.1f} s after S3 returned", file=sys.stderr)
        shutil.rmtree(tmp_path / "n1")
        restore_agent("o", tmp_path / "n2", replica)
        assert len(inspect_agent(tmp_path / "n2", "o").runs[0].steps) == 30
    finally:
        proxy.close()


def test_replicated_step_times_out_clearly_while_s3_is_down(tmp_path: Path, moto_endpoint: str,
                                                            s3_env: dict[str, str], bucket: str) -> None:
    from agentshards._core.journal import Journal
    from agentshards._core.shard import open_shard
    from agentshards._fleet.run import start_replication

    proxy = FaultProxy(int(moto_endpoint.rsplit(":", 1)[1]))
    env = dict(s3_env, AWS_ENDPOINT_URL_S3=proxy.endpoint)
    replication = start_replication(tmp_path / "d", f"s3://{bucket}/down", RunConfig(), env)
    try:
        journal = Journal(open_shard(tmp_path / "d", "t", RunConfig().shard), "t")
        replication.litestream.register("t")
        replication.confirm("t", 30)
        proxy.outage()
        journal.record_step(journal.begin_run("m:f", "{}", "d").id, "s", "step", "1")
        started = time.monotonic()
        with pytest.raises(ReplicationError) as info:
            replication.confirm("t", 3)
        assert time.monotonic() - started < 15
        assert "agent 't'" in str(info.value) and "hint:" in str(info.value)
        journal.close()
    finally:
        proxy.resume()  # let Litestream's shutdown sync finish instead of waiting out its bound
        replication.litestream.stop()
        proxy.close()


def test_status_reports_lag_and_snapshots(tmp_path: Path) -> None:
    from agentshards._core.journal import Journal
    from agentshards._core.shard import open_shard
    from agentshards._fleet.run import start_replication

    replication = start_replication(tmp_path / "d", str(tmp_path / "r"), RunConfig(), os.environ)
    try:
        journal = Journal(open_shard(tmp_path / "d", "s1", RunConfig().shard), "s1")
        replication.litestream.register("s1")
        replication.confirm("s1", 30)
        (status,) = replication.status()
        assert (status.agent_id, status.state, status.snapshot, status.lag_s) == ("s1", "replicating", True, 0.0)
        assert status.healthy and status.last_sync_at is not None
        for key in replication.store.list(replication.target.agent_key("s1") + "/"):
            replication.store.delete(key)  # the replica loses its snapshot behind Litestream's back
        (status,) = replication.status()
        assert not status.snapshot and not status.healthy
        journal.close()
    finally:
        replication.litestream.stop()


@pytest.fixture
def authenticating_s3(tmp_path: Path) -> Iterator[str]:
    """An S3 server that checks credentials (rclone serve s3 --auth-key), on loopback."""
    import socket
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    (tmp_path / "rclone" / "bkt").mkdir(parents=True)
    proc = subprocess.Popen([str(Path(sys.executable).parent / "rclone"), "serve", "s3", "--addr", f"127.0.0.1:{port}",
                             "--auth-key", "GOODKEY,good-secret", str(tmp_path / "rclone")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=1)
            break
        except urllib.error.HTTPError:
            break  # it answers (403 without credentials): up
        except OSError:
            assert proc.poll() is None and time.monotonic() < deadline, "rclone serve s3 did not start"
            time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    proc.terminate()
    proc.wait(timeout=10)


def test_wrong_credentials_fail_clearly_at_start_and_right_ones_replicate(
        tmp_path: Path, authenticating_s3: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from agentshards._core.journal import Journal
    from agentshards._core.shard import open_shard
    from agentshards._fleet.run import start_replication

    for key in [k for k in os.environ if k.startswith("AWS_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", authenticating_s3)
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "GOODKEY")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong-secret")
    started = time.monotonic()
    with pytest.raises(InvalidReplica, match="403") as info:
        run_agent(sample_agents.local_steps, agent_id="c", data_dir=tmp_path / "d", replica="s3://bkt/x", n=1)
    assert "AWS_SECRET_ACCESS_KEY" in str(info.value) and time.monotonic() - started < 30
    assert not (tmp_path / "d").exists()
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "good-secret")
    # rclone's S3 server ignores conditional PUTs: no prefix lease can be held there, so run_agent refuses it
    with pytest.raises(InvalidReplica, match=f"s3://bkt/x at {authenticating_s3} ignores If-None-Match on PUT"):
        run_agent(sample_agents.local_steps, agent_id="c", data_dir=tmp_path / "d", replica="s3://bkt/x", n=3)
    assert not (tmp_path / "d").exists()
    # the right credentials do reach Litestream
    replication = start_replication(tmp_path / "d", "s3://bkt/x", RunConfig(), os.environ)
    try:
        journal = Journal(open_shard(tmp_path / "d", "c", RunConfig().shard), "c")
        replication.litestream.register("c")
        journal.begin_run("sample_agents:local_steps", '{"n":3}', "digest")
        journal.close()
        replication.litestream.sync("c", 30)
    finally:
        replication.litestream.stop()
    restore_agent("c", tmp_path / "back", "s3://bkt/x")
    assert [r.run.target for r in inspect_agent(tmp_path / "back", "c").runs] == ["sample_agents:local_steps"]


def test_a_hung_s3_connection_is_detected_and_litestream_restarted(tmp_path: Path, moto_endpoint: str,
                                                                    s3_env: dict[str, str], bucket: str) -> None:
    """Litestream's S3 client waits 24 h on a connection that never answers; the watchdog restarts it."""
    from agentshards._core.journal import Journal
    from agentshards._core.shard import open_shard
    from agentshards._fleet.run import start_replication

    proxy = FaultProxy(int(moto_endpoint.rsplit(":", 1)[1]))
    env = dict(s3_env, AWS_ENDPOINT_URL_S3=proxy.endpoint)
    config = RunConfig(litestream=LitestreamConfig(stall_timeout_s=3.0))
    replication = start_replication(tmp_path / "d", f"s3://{bucket}/hung", config, env)
    try:
        journal = Journal(open_shard(tmp_path / "d", "h", RunConfig().shard), "h")
        replication.litestream.register("h")
        run = journal.begin_run("m:f", "{}", "d")
        journal.record_step(run.id, "before", "step", "1")
        replication.confirm("h", 30)
        first_pid = replication.litestream.pid
        proxy.hang()
        journal.record_step(run.id, "during", "step", "2")
        deadline = time.monotonic() + 60
        while not (proxy.hung_connections and replication.status(snapshots=False)[0].lag_s > 1.0):
            assert time.monotonic() < deadline  # wait until the upload is stuck in the black hole
            time.sleep(0.1)
        proxy.resume()  # S3 is fine again, but the connections Litestream holds stay hung
        assert not replication.restart_if_stalled(force_check=True)  # not stalled long enough yet
        deadline = time.monotonic() + 60
        while not replication.restart_if_stalled():
            assert time.monotonic() < deadline, "the stall was never detected"
            time.sleep(0.2)
        assert replication.litestream.pid != first_pid
        replication.confirm("h", 30)  # the restarted Litestream catches up
        journal.close()
    finally:
        replication.litestream.stop()
        proxy.close()
    restore_agent("h", tmp_path / "back", f"s3://{bucket}/hung", env=s3_env)
    assert len(inspect_agent(tmp_path / "back", "h").runs[0].steps) == 2


def test_litestream_restarted_from_a_short_lived_thread_outlives_it(tmp_path: Path) -> None:
    """The parent-death signal is tied to the spawning thread: restarts must not come from a dying thread."""
    import threading

    from agentshards._fleet.run import start_replication

    replication = start_replication(tmp_path / "d", str(tmp_path / "r"), RunConfig(
        litestream=LitestreamConfig(restart_backoff_s=0.0)), os.environ)
    try:
        pid = replication.litestream.pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        replication.litestream._proc.wait()  # type: ignore[union-attr]
        thread = threading.Thread(target=replication.litestream.ensure_running)
        thread.start()
        thread.join()
        proc = replication.litestream._proc
        assert proc is not None
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline:  # with the bug it was SIGTERMed within milliseconds
            assert proc.poll() is None, "litestream died with the thread that restarted it"
            time.sleep(0.05)
    finally:
        replication.litestream.stop()


def test_the_watchdog_tells_a_stuck_litestream_from_a_slow_one() -> None:
    from agentshards._replication.replication import AgentReplicationStatus, Replication

    now = time.time()
    replication = Replication.__new__(Replication)  # _stalled reads only the statuses and its log throttle
    replication._slow_logged_at = -1e9

    def status(agent: str, lag: float, synced_ago: float) -> AgentReplicationStatus:
        return AgentReplicationStatus(agent, "replicating", now - synced_ago, now, lag, False)

    slow = [status(f"a{i}", 40 + i, 1) for i in range(20)] + [status("w", 70, 1)]
    assert replication._stalled(slow, 60) is None  # overloaded: everyone waits, syncs still complete
    nothing_syncs = [status(f"a{i}", 70, 80) for i in range(3)]
    assert "no shard synced" in (replication._stalled(nothing_syncs, 60) or "")
    one_hung = [status(f"a{i}", 0.5, 1) for i in range(20)] + [status("h", 90, 1)]
    assert "agent h" in (replication._stalled(one_hung, 60) or "")
    assert replication._stalled([status("a", 0.0, 500)], 60) is None  # idle, nothing waiting


def test_a_restore_removes_the_temp_dir_a_killed_restore_of_that_agent_left(tmp_path: Path) -> None:
    replica = str(tmp_path / "r")
    run_agent(sample_agents.two_steps, agent_id="a", data_dir=tmp_path / "src", replica=replica, x=1)
    data = tmp_path / "dst"
    (data / ".restore-a-k9x_2abc").mkdir(parents=True)   # a killed restore of agent "a"
    (data / ".restore-a-b-k9x_2abc").mkdir()             # one of agent "a-b", maybe still running
    restore_agent("a", data, replica)
    assert not (data / ".restore-a-k9x_2abc").exists()
    assert (data / ".restore-a-b-k9x_2abc").exists()
    assert (data / "a.db").exists()


def test_a_registration_that_races_a_restart_reaches_the_new_litestream(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    # register() talks to Litestream outside its lock (so a fleet registers agents in parallel): a restart
    # landing between the old process's answer and the bookkeeping must not leave the agent unreplicated.
    from agentshards._core.shard import open_shard

    data = tmp_path / "d"
    litestream = Litestream(data, parse_replica(str(tmp_path / "r")), LitestreamConfig(), os.environ)
    litestream.start()
    try:
        for agent_id in ("before", "raced"):
            open_shard(data, agent_id, RunConfig().shard).close()
        litestream.register("before")
        real_call = litestream._call
        restarted: list[int | None] = []

        def call_then_restart(method: str, path: str, body: object, **kw: object) -> object:
            answer = real_call(method, path, body, **kw)  # type: ignore[arg-type]
            if path == "/register" and not restarted:
                restarted.append(litestream.pid)
                litestream.restart("test: a restart right after the old process registered the agent")
            return answer

        monkeypatch.setattr(litestream, "_call", call_then_restart)
        litestream.register("raced")
        monkeypatch.setattr(litestream, "_call", real_call)
        assert restarted and restarted[0] != litestream.pid  # a new process answers now
        listed = {Path(db["path"]).name for db in litestream.databases()}
        assert listed == {"before.db", "raced.db"}
        assert litestream.registered == ["before", "raced"]
    finally:
        litestream.stop()

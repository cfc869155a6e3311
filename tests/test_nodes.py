"""Fleets across nodes: real `agentshards node` process trees sharing one prefix on the loopback S3 server.

Each node is its own process group (supervisor, zygote, workers, Litestream) with its own data dir, so a
node is lost by SIGKILLing its whole group and wiping its data dir, and paused by SIGSTOPping it.
"""

from __future__ import annotations

import collections
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from node_process import Nodes

from agentshards import FakeLLMServer, list_fleet
from agentshards._fleet.node import submit
from agentshards._replication.nodes import list_nodes
from agentshards._replication.objectstore import store_for
from agentshards._replication.replica import parse_replica
from agentshards._replication.restore import restore_agent

from agent_process import TESTS_DIR

CLI = [sys.executable, "-m", "agentshards"]
TTL = 5.0  # short, so that expiries fit CI; margin is a sixth of it (Nodes starts nodes with it)


def _wait_for(condition: Callable[[], object], deadline_s: float, what: str) -> None:
    end = time.monotonic() + deadline_s
    while not condition():
        assert time.monotonic() < end, f"{what}: not within {deadline_s}s"
        time.sleep(0.1)


@pytest.fixture
def fleet_env(s3_env: dict[str, str]) -> Iterator[tuple[dict[str, str], FakeLLMServer]]:
    with FakeLLMServer(delay_s=0.15) as llm:
        yield dict(s3_env, OPENAI_API_KEY="k", OPENAI_BASE_URL=llm.base_url), llm


def _entries(replica: str, env: dict[str, str]) -> dict[str, Any]:
    return {e.agent_id: e for e in list_fleet(replica, env=env)}


def _requests_per_call(llm: FakeLLMServer) -> collections.Counter[tuple[str, str]]:
    return collections.Counter((r.body.get("user", "?"), r.body["messages"][0]["content"]) for r in llm.requests)


def test_three_nodes_survivors_take_over_a_lost_nodes_agents_by_themselves(
        tmp_path: Path, fleet_env: tuple[dict[str, str], FakeLLMServer], bucket: str) -> None:
    env, llm = fleet_env
    replica, agents, calls = f"s3://{bucket}/fleet", 30, 20  # long enough to be mid-run at the kill
    assert all(v == "queued" for v in submit("sample_agents:chat_calls", {f"a{i}": {"n": calls} for i in range(agents)},
                                             replica, env=env).values())
    nodes = Nodes(tmp_path, replica, env)
    try:
        for name in ("n1", "n2", "n3"):  # LLM steps return once the replica holds them
            nodes.start(name, capacity=15, extra=("--llm-durability", "replicated"))
        # n1 owns some agents mid-run
        _wait_for(lambda: sum(e.node == "n1" and e.live > 0 for e in _entries(replica, env).values()) >= 3 and
                  llm.request_count >= 40, 90, "n1 running agents")
        killed_at = time.monotonic()
        nodes.kill("n1")
        nodes.procs["n1"].wait()
        owned_by_n1 = {a for a, e in _entries(replica, env).items() if e.node == "n1"}  # n1 writes no more
        in_flight_at_kill = llm.request_count
        shutil.rmtree(tmp_path / "n1")  # the node and its disk are gone
        _wait_for(lambda: all(e.status == "succeeded" for e in _entries(replica, env).values()), 150,
                  "all agents succeeded on the survivors")
        took = time.monotonic() - killed_at
        entries = _entries(replica, env)
    finally:
        nodes.stop_all()
    print(f"\nn1 owned {len(owned_by_n1)} agents; all {agents} succeeded {took:.1f}s after its kill "
          f"({llm.request_count} requests, {in_flight_at_kill} by the kill)", file=sys.stderr)
    assert owned_by_n1, "n1 never owned an agent"
    assert {e.node for e in entries.values()} == {None}  # every agent handed back when it ended
    assert all(entries[a].generation >= 2 for a in owned_by_n1)  # claimed again, one generation up at least
    counts = _requests_per_call(llm)
    assert {user for user, _ in counts} == {f"a{i}" for i in range(agents)}
    repeated = {k: n for k, n in counts.items() if n > 1}
    # no completed (replicated) call is requested again: only the one in flight at the kill, per n1 agent
    assert all(k[0] in owned_by_n1 and n == 2 for k, n in repeated.items()), repeated
    assert len(repeated) <= len(owned_by_n1), repeated
    for agent_id in sorted(owned_by_n1):  # each one's live replica restores, checked, with one run
        _check_replica(agent_id, tmp_path / "check", replica, env, calls=calls)


def test_a_zombie_node_stops_its_agents_without_publishing_them(
        tmp_path: Path, fleet_env: tuple[dict[str, str], FakeLLMServer], bucket: str) -> None:
    """SIGSTOP a node's whole tree for twice its TTL: another node takes its agents; after SIGCONT the zombie
    finds its lease replaced, fences itself, and writes no entry of the agents it ran."""
    env, _llm = fleet_env
    replica = f"s3://{bucket}/fleet"
    submit("sample_agents:chat_calls", {f"z{i}": {"n": 30} for i in range(4)}, replica, env=env)
    nodes = Nodes(tmp_path, replica, env)
    try:
        nodes.start("zombie", capacity=10)
        _wait_for(lambda: sum(e.node == "zombie" and e.live > 0 for e in _entries(replica, env).values()) == 4,
                  60, "the zombie running its agents")
        nodes.kill("zombie", signal.SIGSTOP)
        stopped_at = time.monotonic()
        nodes.start("survivor", capacity=10)
        _wait_for(lambda: all(e.node == "survivor" for e in _entries(replica, env).values()), 60,
                  "the survivor owning every agent")
        assert time.monotonic() - stopped_at >= TTL  # never before the zombie's lease could have lapsed
        before = _entries(replica, env)
        time.sleep(max(0.0, stopped_at + 2 * TTL - time.monotonic()))
        nodes.kill("zombie", signal.SIGCONT)
        _wait_for(lambda: nodes.procs["zombie"].poll() is not None, 30, "the zombie exits after SIGCONT")
        after = _entries(replica, env)
        _wait_for(lambda: all(e.status == "succeeded" for e in _entries(replica, env).values()), 120,
                  "the survivor finishing every agent")
    finally:
        nodes.stop_all()
    assert nodes.procs["zombie"].returncode != 0
    assert "lost the lease" in nodes.log("zombie") or "could not renew" in nodes.log("zombie")
    # nothing the zombie wrote after its wake-up reached an entry: each names the survivor's generation (or
    # the survivor finished it and handed it back)
    assert all(after[a].generation == e.generation and after[a].node in ("survivor", None) for a, e in before.items())
    for agent_id in sorted(before):  # every live replica restores, checked, with one run and every call
        _check_replica(agent_id, tmp_path / "check", replica, env, calls=30)


def _check_replica(agent_id: str, into: Path, replica: str, env: dict[str, str], *, calls: int) -> None:
    import apsw

    path = restore_agent(agent_id, into, replica, env=env)
    conn = apsw.Connection(str(path), flags=apsw.SQLITE_OPEN_READONLY)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert conn.execute("SELECT count(*) FROM workflows").fetchall() == [(1,)]
        assert conn.execute("SELECT count(*) FROM steps").fetchall() == [(calls,)]
    finally:
        conn.close()


def test_submit_refuses_an_existing_id_and_a_node_added_later_picks_queued_agents_up(
        tmp_path: Path, fleet_env: tuple[dict[str, str], FakeLLMServer], bucket: str) -> None:
    env, _llm = fleet_env
    replica = f"s3://{bucket}/fleet"
    first = submit("sample_agents:chat_calls", {"q1": {"n": 1}, "q2": {"n": 1}}, replica, env=env)
    again = submit("sample_agents:chat_calls", {"q1": {"n": 99}, "q3": {"n": 1}}, replica, env=env)
    assert first == {"q1": "queued", "q2": "queued"}
    assert again["q3"] == "queued" and "already exists" in str(again["q1"])
    assert json.loads(_entries(replica, env)["q1"].inputs_json) == {"n": 1}  # the first stays as it was
    nodes = Nodes(tmp_path, replica, env)
    try:
        nodes.start("late")
        _wait_for(lambda: all(e.status == "succeeded" for e in _entries(replica, env).values()), 60,
                  "the node running every queued agent")
        target = parse_replica(replica, env)
        assert [n.node_id for n in list_nodes(store_for(target, env), target)] == ["late"]
        listed = subprocess.run([*CLI, "nodes", "--replica", replica, "--json"], env=env, capture_output=True,
                                text=True, timeout=60)
        assert listed.returncode == 0 and json.loads(listed.stdout)[0]["node_id"] == "late"
        drained = subprocess.run([*CLI, "drain", "late", "--replica", replica], env=env, capture_output=True,
                                 text=True, timeout=60)
        assert drained.returncode == 0, drained.stderr
        nodes.procs["late"].wait(timeout=60)
        assert nodes.procs["late"].returncode == 0, nodes.log("late")
        assert list_nodes(store_for(target, env), target) == []  # its lease and drain request are gone
        shown = subprocess.run([*CLI, "inspect", "q1", "--data-dir", str(tmp_path / "late"), "--replica", replica,
                                "--json"], env=env, capture_output=True, text=True, timeout=60)
        assert shown.returncode == 0, shown.stderr
        assert json.loads(shown.stdout)["owner"]["generation"] == 1  # claimed once, handed back when it ended
        status = subprocess.run([*CLI, "status", "--data-dir", str(tmp_path / "late"), "--replica", replica,
                                 "--json"], env=env, capture_output=True, text=True, timeout=60)
        assert {(a["agent_id"], a["node"], a["generation"]) for a in json.loads(status.stdout)["agents"]} == {
            ("q1", None, 1), ("q2", None, 1), ("q3", None, 1)}
    finally:
        nodes.stop_all()


def test_a_drained_nodes_agents_are_claimed_before_its_ttl_would_have_expired(
        tmp_path: Path, fleet_env: tuple[dict[str, str], FakeLLMServer], bucket: str) -> None:
    env, _llm = fleet_env
    replica = f"s3://{bucket}/fleet"
    submit("sample_agents:chat_calls", {f"d{i}": {"n": 40} for i in range(3)}, replica, env=env)
    nodes = Nodes(tmp_path, replica, env)
    try:
        nodes.start("first")
        _wait_for(lambda: sum(e.node == "first" and e.live > 0 for e in _entries(replica, env).values()) == 3, 60,
                  "the first node running its agents")
        nodes.start("second")
        _wait_for(lambda: "second" in {n.node_id for n in list_nodes(*_store(replica, env))}, 30, "second is up")
        drained_at = time.monotonic()
        nodes.procs["first"].send_signal(signal.SIGTERM)  # to the node's process, as Kubernetes and systemd do
        _wait_for(lambda: all(e.node == "second" for e in _entries(replica, env).values()), 60,
                  "the second node owning every agent")
        took = time.monotonic() - drained_at
        nodes.procs["first"].wait(timeout=60)
    finally:
        nodes.stop_all()
    assert nodes.procs["first"].returncode == 0, nodes.log("first")
    assert took < TTL, f"claimed {took:.1f}s after the drain: as slow as an expiry"


def test_a_partitioned_node_stops_itself_within_its_ttl_and_the_others_take_over(
        tmp_path: Path, moto_endpoint: str, fleet_env: tuple[dict[str, str], FakeLLMServer], bucket: str) -> None:
    from fault_proxy import FaultProxy

    env, _llm = fleet_env
    replica = f"s3://{bucket}/fleet"
    submit("sample_agents:chat_calls", {f"p{i}": {"n": 40} for i in range(3)}, replica, env=env)
    proxy = FaultProxy(int(moto_endpoint.rsplit(":", 1)[1]))
    nodes = Nodes(tmp_path, replica, env)
    try:
        cut_off = nodes.start("cut", env=dict(env, AWS_ENDPOINT_URL_S3=proxy.endpoint))
        _wait_for(lambda: sum(e.node == "cut" and e.live > 0 for e in _entries(replica, env).values()) == 3, 60,
                  "the node running its agents")
        nodes.start("other")
        proxy.outage()  # the node can no longer reach S3; everyone else still can
        cut_at = time.monotonic()
        _wait_for(lambda: cut_off.poll() is not None, TTL + 10, "the partitioned node stops itself")
        stopped = time.monotonic() - cut_at
        _wait_for(lambda: all(e.node == "other" for e in _entries(replica, env).values()), 60,
                  "the other node owning every agent")
        taken = time.monotonic() - cut_at
    finally:
        proxy.close()
        nodes.stop_all()
    print(f"\nthe partitioned node stopped {stopped:.1f}s after the cut; its agents were claimed after {taken:.1f}s",
          file=sys.stderr)
    assert stopped < TTL, "the partitioned node outlived its lease"
    assert taken >= TTL, "its agents were claimed before its lease could have lapsed"
    assert cut_off.returncode == 1 and "could not renew" in nodes.log("cut")
    assert "Traceback" not in nodes.log("cut")


def _store(replica: str, env: dict[str, str]) -> tuple[Any, Any]:
    target = parse_replica(replica, env)
    return store_for(target, env), target


def test_a_node_on_a_prefix_held_by_the_layout_before_nodes_is_refused(
        tmp_path: Path, s3_env: dict[str, str], bucket: str) -> None:
    s3 = boto3.client("s3", endpoint_url=s3_env["AWS_ENDPOINT_URL_S3"], region_name="us-east-1",
                      aws_access_key_id="testing", aws_secret_access_key="testing-secret-canary")
    s3.put_object(Bucket=bucket, Key="fleet/lease.json", Body=json.dumps(
        {"owner": "old-node", "seq": 1, "ttl_s": 30.0, "margin_s": 5.0, "expires_at": time.time() + 30}).encode())
    proc = subprocess.run([*CLI, "node", "--replica", f"s3://{bucket}/fleet", "--data-dir", str(tmp_path / "d")],
                          env=s3_env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert "layout before nodes" in proc.stderr and "old-node" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_directory_replica_refuses_nodes_on_a_second_host(tmp_path: Path) -> None:
    from agentshards import Fleet, InvalidReplica

    replica = tmp_path / "replica"
    (replica / "nodes").mkdir(parents=True)
    (replica / "nodes" / "elsewhere.json").write_text(json.dumps(
        {"owner": "elsewhere", "host": "another-machine", "seq": 1, "ttl_s": 30.0, "margin_s": 5.0}))
    fleet = Fleet(tmp_path / "d", str(replica), app_dir=TESTS_DIR)
    with pytest.raises(InvalidReplica, match="another-machine") as refused:
        fleet.launch("sample_agents:two_steps", {"a": {"x": 1}})
    assert "one host only" in str(refused.value)
    assert sorted(p.name for p in (replica / "nodes").iterdir()) == ["elsewhere.json"]  # no lease was taken


def test_a_stopping_node_records_the_answers_in_flight_and_sends_no_new_request(tmp_path: Path) -> None:
    """SIGTERM to the workers (what a drain does) lets an LLM call in flight finish and be recorded; the agent
    sends nothing more, its run stays open, and it is handed back to resume elsewhere without paying again."""
    from agentshards import Node, inspect_agent

    replica = str(tmp_path / "replica")
    with FakeLLMServer(delay_s=1.5) as llm:
        env = dict(os.environ, OPENAI_API_KEY="k", OPENAI_BASE_URL=llm.base_url)
        submit("sample_agents:chat_calls", {"slow": {"n": 5}}, replica, env=env)
        node = Node(tmp_path / "d", replica, app_dir=TESTS_DIR, env=env, lease_ttl_s=TTL)
        runner = threading.Thread(target=node.run)
        runner.start()
        try:
            _wait_for(lambda: llm.request_count == 2, 60, "the second call in flight")
            node.stop()
        finally:
            runner.join(timeout=60)
        sent = llm.request_count
    (run,) = inspect_agent(tmp_path / "d", "slow").runs
    assert sent == 2  # nothing sent after the stop
    assert [s.name for s in run.steps] == ["llm#1", "llm#2"]  # the answer in flight was recorded
    assert run.run.status == "running"  # not an outcome: the run stays open
    entry = _entries(replica, env)["slow"]
    assert entry.node is None and entry.status == "running"  # handed back once its replica held all of it


def test_a_node_whose_supervisor_alone_is_paused_stops_its_workers_by_their_own_fence(
        tmp_path: Path, fleet_env: tuple[dict[str, str], FakeLLMServer], bucket: str) -> None:
    """SIGSTOP the supervisor process only: its workers and Litestream run on, but the workers stop writing at
    the supervisor's lease deadline by themselves; another node takes the agents; after SIGCONT the paused
    supervisor fences itself and publishes nothing."""
    env, llm = fleet_env
    replica = f"s3://{bucket}/fleet"
    submit("sample_agents:chat_calls", {f"s{i}": {"n": 30} for i in range(3)}, replica, env=env)
    nodes = Nodes(tmp_path, replica, env)
    try:
        nodes.start("paused", capacity=10)
        # its workers are calling the LLM (live entries alone came before its first worker once: nothing to fence)
        _wait_for(lambda: {r.body.get("user") for r in llm.requests} >= {"s0", "s1", "s2"}, 60,
                  "the node's workers running its agents")
        os.kill(nodes.procs["paused"].pid, signal.SIGSTOP)  # the supervisor alone
        stopped_at = time.monotonic()
        nodes.start("taker", capacity=10)
        _wait_for(lambda: all(e.node == "taker" for e in _entries(replica, env).values()), 60,
                  "the other node owning every agent")
        took = time.monotonic() - stopped_at
        time.sleep(max(0.0, stopped_at + 2 * TTL - time.monotonic()))
        os.kill(nodes.procs["paused"].pid, signal.SIGCONT)
        _wait_for(lambda: nodes.procs["paused"].poll() is not None, 30, "the paused node exits after SIGCONT")
        _wait_for(lambda: all(e.status == "succeeded" for e in _entries(replica, env).values()), 120,
                  "the other node finishing every agent")
        entries = _entries(replica, env)
    finally:
        nodes.stop_all()
    assert took >= TTL, "its agents were claimed before its lease could have lapsed"
    assert nodes.procs["paused"].returncode == 1
    assert "could not renew" in nodes.log("paused")  # woken past its deadline: it fenced itself
    worker_logs = "".join(p.read_text() for p in (tmp_path / "paused" / ".fleet" / "logs").glob("*.log"))
    assert "Fenced" in worker_logs  # the workers stopped at the deadline by themselves, while it was paused
    assert all(e.node is None and e.generation == 2 for e in entries.values())  # nothing written by the paused one
    for agent_id in sorted(entries):
        _check_replica(agent_id, tmp_path / "check", replica, env, calls=30)

"""The prefix lease with real processes: a fleet on moto behind a proxy that can cut it off from S3 stops
itself before its TTL and is taken over only after TTL + margin; run_agent holds the lease for its call.
Public API only, plus the fault proxy."""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path

import boto3
import pytest

from agentshards import AgentOwned, Fleet, LeaseError, run_agent
from agentshards._replication.replica import parse_replica

import sample_agents
from agent_process import TESTS_DIR
from fault_proxy import FaultProxy


def _alive(pid: int) -> bool:
    try:
        return "zombie" not in Path(f"/proc/{pid}/status").read_text().lower()
    except OSError:
        return False


def test_a_fleet_cut_off_from_s3_stops_itself_before_its_ttl_and_is_taken_over_only_after_ttl_plus_margin(
        tmp_path: Path, moto_endpoint: str, s3_env: dict[str, str], bucket: str) -> None:
    ttl, margin = 6.0, 1.0  # the default margin: a sixth of the TTL
    replica = f"s3://{bucket}/fleet"
    s3 = boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1", aws_access_key_id="testing",
                      aws_secret_access_key="testing-secret-canary")

    def owner() -> str:
        return str(json.loads(s3.get_object(Bucket=bucket, Key="fleet/manifest/long.json")["Body"].read())["node"])

    proxy = FaultProxy(int(moto_endpoint.rsplit(":", 1)[1]))
    node1 = Fleet(tmp_path / "node1", replica, env=dict(s3_env, AWS_ENDPOINT_URL_S3=proxy.endpoint),
                          app_dir=TESTS_DIR, lease_ttl_s=ttl)
    ended: list[BaseException] = []
    taker: list[BaseException | dict[str, object]] = []
    try:
        node1.launch("sample_agents:slow_step", {"long": {"seconds": 60.0, "timeout_s": 120.0}})

        def run_node1() -> None:
            try:
                node1.wait(timeout_s=60)
            except BaseException as exc:
                ended.append(exc)

        runner = threading.Thread(target=run_node1)
        runner.start()
        deadline = time.monotonic() + 30
        while not node1.worker_pids():
            assert time.monotonic() < deadline, "node 1 never started its worker"
            time.sleep(0.02)
        supervisor = node1._supervisor
        assert supervisor is not None and supervisor._zygote is not None and supervisor._zygote._proc is not None
        pids = [*node1.worker_pids(), supervisor._zygote._proc.pid, node1._replication.litestream.pid]
        holder = owner()

        cut = time.monotonic()
        proxy.outage()  # node 1 can no longer reach S3; the test (and node 2) still can

        def run_node2() -> None:
            try:
                node2 = Fleet(tmp_path / "node2", replica, env=s3_env, app_dir=TESTS_DIR, lease_ttl_s=ttl,
                              take_over=True)
                # the same agent: node 2 must outwait node 1's lease before it claims it (a new run, to be quick)
                node2.launch("sample_agents:slow_step", {"long": {"seconds": 0.1, "timeout_s": 120.0}}, new_run=True)
                taker.append(node2.wait(timeout_s=60))
            except BaseException as exc:
                taker.append(exc)

        second = threading.Thread(target=run_node2)
        second.start()
        gone_at = taken_at = None
        while taken_at is None:
            now = time.monotonic()
            assert now < cut + 30, "node 2 never took the prefix over"
            if gone_at is None and not any(_alive(pid) for pid in pids):
                gone_at = now
            if owner() != holder:
                taken_at = now
            time.sleep(0.02)
        second.join(timeout=60)
        runner.join(timeout=30)
    finally:
        proxy.close()
        node1.close()
    print(f"\nnode 1 stopped {gone_at - cut if gone_at else -1:.2f}s after the cut; node 2 took over after "
          f"{taken_at - cut:.2f}s", file=sys.stderr)
    assert gone_at is not None and gone_at - cut < ttl, "node 1's workers, zygote and Litestream outlived its TTL"
    assert taken_at - cut >= ttl + margin, f"node 2 took over {taken_at - cut:.1f}s after node 1 went silent"
    assert len(ended) == 1 and isinstance(ended[0], LeaseError) and "could not renew" in ended[0].message
    assert len(taker) == 1 and isinstance(taker[0], dict), taker
    assert taker[0] == {"long": "done"}, taker  # node 2 ran the agent after its claim


def test_run_agent_is_a_node_owning_its_agent_for_the_call(tmp_path: Path) -> None:
    replica = tmp_path / "replica"
    outcome: list[object] = []
    runner = threading.Thread(target=lambda: outcome.append(run_agent(
        sample_agents.slow_step, agent_id="solo", data_dir=tmp_path / "d", replica=str(replica), seconds=3.0,
        timeout_s=30.0)))
    runner.start()
    try:
        deadline = time.monotonic() + 30
        while not list((replica / "nodes").glob("*.json")) or not (replica / "manifest" / "solo.json").exists():
            assert time.monotonic() < deadline and runner.is_alive(), "run_agent did not take a lease and claim"
            time.sleep(0.01)
        [lease] = (replica / "nodes").glob("*.json")
        holder = json.loads((replica / "manifest" / "solo.json").read_text())["node"]
        assert holder == lease.stem
        other = Fleet(tmp_path / "other", str(replica), app_dir=TESTS_DIR)
        other.launch("sample_agents:slow_step", {"solo": {"seconds": 3.0, "timeout_s": 30.0}})
        refused = other.wait(timeout_s=30)["solo"]  # refused per agent: its outcome, nothing of it ran there
        assert isinstance(refused, AgentOwned) and refused.node == holder and refused.agent_id == "solo"
        assert f"node {holder} owns it" in str(refused) and not (tmp_path / "other" / "solo.db").exists()
    finally:
        runner.join(timeout=60)
    assert outcome == ["done"]
    assert not list((replica / "nodes").glob("*.json"))  # its lease is deleted when the call returns
    assert json.loads((replica / "manifest" / "solo.json").read_text())["node"] is None  # and the agent is nobody's


def test_run_agent_cut_off_from_s3_stops_its_litestream_before_its_ttl_and_says_so(
        tmp_path: Path, moto_endpoint: str, s3_env: dict[str, str], bucket: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    from agentshards import RunConfig

    ttl = 3.0
    proxy = FaultProxy(int(moto_endpoint.rsplit(":", 1)[1]))
    for key, value in dict(s3_env, AWS_ENDPOINT_URL_S3=proxy.endpoint).items():
        if key.startswith("AWS_"):
            monkeypatch.setenv(key, value)
    outcome: list[object] = []

    def run() -> None:
        try:
            outcome.append(run_agent(sample_agents.slow_step, agent_id="solo", data_dir=tmp_path / "d",
                                     replica=f"s3://{bucket}/solo", config=RunConfig(lease_ttl_s=ttl), seconds=6.0,
                                     timeout_s=30.0))
        except BaseException as exc:
            outcome.append(exc)

    runner = threading.Thread(target=run)
    runner.start()
    try:
        pid_path = tmp_path / "d" / "litestream.pid"
        deadline = time.monotonic() + 30
        while not pid_path.exists():
            assert time.monotonic() < deadline and runner.is_alive(), "run_agent never started Litestream"
            time.sleep(0.01)
        litestream = int(pid_path.read_text())
        # cut S3 off once the agent is under way (its manifest entry written): a cut before that write is
        # a different failure, the manifest's, which ends the call with a ReplicationError instead
        import boto3

        direct = boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1")
        key = parse_replica(f"s3://{bucket}/solo", {}).manifest_key("solo")
        while "Contents" not in direct.list_objects_v2(Bucket=bucket, Prefix=key):
            assert time.monotonic() < deadline and runner.is_alive(), "run_agent never published its manifest"
            time.sleep(0.01)
        cut = time.monotonic()
        proxy.outage()
        while _alive(litestream):
            assert time.monotonic() < cut + ttl, "Litestream outlived the lease's TTL"
            time.sleep(0.01)
    finally:
        runner.join(timeout=60)
        proxy.close()
    assert len(outcome) == 1 and isinstance(outcome[0], LeaseError), outcome
    assert "could not renew the lease" in outcome[0].message

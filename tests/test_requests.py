"""cancel, retry and delete through the replica prefix, carried out by whichever node owns the agent.

Nodes run in threads of the test process (their workers are real processes) on a directory replica; the
same requests go through S3 the same way (the entry's conditional writes are the store contract's)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from agentshards import (
    AgentFailed,
    Fleet,
    InvalidInputs,
    Node,
    SupervisorConfig,
    cancel_in_fleet,
    delete_in_fleet,
    inspect_agent,
    list_fleet,
    restore_agent,
    retry_in_fleet,
    submit,
)
from agentshards._replication.manifest import ManifestEntry, read_manifest, write_manifest
from agentshards._replication.objectstore import store_for
from agentshards._replication.replica import parse_replica

from agent_process import TESTS_DIR, wait_for


def _entries(replica: str) -> dict[str, ManifestEntry]:
    return {e.agent_id: e for e in list_fleet(replica)}


class _Running:
    def __init__(self, node: Node) -> None:
        self.node = node
        self.results: dict[str, object] = {}
        self.thread = threading.Thread(target=lambda: self.results.update(node.run()))
        self.thread.start()

    def stop(self) -> None:
        self.node.stop()
        self.thread.join(timeout=60)
        assert not self.thread.is_alive()


@pytest.fixture
def nodes(tmp_path: Path) -> Iterator[Callable[[str], _Running]]:
    started: list[_Running] = []

    def start(name: str) -> _Running:
        node = Node(tmp_path / name, str(tmp_path / "replica"), node_id=name, app_dir=TESTS_DIR, lease_ttl_s=6.0,
                    scan_every_s=0.3)
        started.append(_Running(node))
        return started[-1]

    yield start
    for running in started:
        if running.thread.is_alive():
            running.stop()


def _steps_done(data: Path, agent_id: str) -> int:
    try:
        return len(inspect_agent(data, agent_id).runs[-1].steps)
    except Exception:  # not there yet
        return 0


def test_cancel_and_delete_an_agent_a_node_is_running(tmp_path: Path, nodes: Callable[[str], _Running]) -> None:
    replica = str(tmp_path / "replica")
    submit("request_agents:slow_steps", {a: {"n": 100, "seconds": 0.1} for a in ("c", "d")}, replica)
    submit("request_agents:slow_steps", {"ok": {"n": 3, "seconds": 0.01}}, replica)
    n1 = nodes("n1")
    wait_for(lambda: _steps_done(tmp_path / "n1", "c") >= 2 and _steps_done(tmp_path / "n1", "d") >= 2, 60,
              "both agents running on the node")
    cancelled = cancel_in_fleet("c", replica, reason="superseded", wait_s=60)
    assert (cancelled.outcome, cancelled.node, cancelled.done) == ("cancelled", "n1", True)
    deleted = delete_in_fleet("d", replica, wait_s=60)
    assert deleted.done and deleted.outcome == "deleted" and "manifest" in deleted.removed
    wait_for(lambda: _entries(replica).get("ok") is not None and _entries(replica)["ok"].status == "succeeded",
              60, "the other agent finishing")
    entries = _entries(replica)
    n1.stop()
    assert "d" not in entries and not (tmp_path / "n1" / "d.db").exists()
    assert not list((tmp_path / "replica" / "agents").glob("d/**/*.ltx"))
    c = entries["c"]
    assert (c.status, c.node, c.request) == ("cancelled", None, None)
    restore_agent("c", tmp_path / "elsewhere", replica)
    (run,) = inspect_agent(tmp_path / "elsewhere", "c").runs
    assert run.run.status == "cancelled" and "superseded" in (run.run.error_json or "")
    assert 2 <= len(run.steps) < 100
    assert not n1.node.fleet._failed  # nothing of this went wrong on the node


def test_retry_a_failed_agent_on_whichever_node_claims_it(tmp_path: Path, nodes: Callable[[str], _Running]) -> None:
    replica, marker = str(tmp_path / "replica"), tmp_path / "fixed"
    submit("request_agents:fails_until", {"f": {"marker": str(marker)}}, replica)
    nodes("n1")
    wait_for(lambda: "f" in _entries(replica) and _entries(replica)["f"].status == "failed", 60, "the agent failing")
    with pytest.raises(InvalidInputs, match="no agent with this id"):
        retry_in_fleet("nope", replica, wait_s=1)
    marker.write_text("fixed")
    retried = retry_in_fleet("f", replica, wait_s=60)
    assert retried.done and retried.outcome in ("retrying", "succeeded")
    wait_for(lambda: _entries(replica)["f"].status == "succeeded", 60, "the retried agent succeeding")
    restore_agent("f", tmp_path / "elsewhere", replica)
    (run,) = inspect_agent(tmp_path / "elsewhere", "f").runs  # the failed run was reopened, not replaced
    assert run.run.status == "succeeded" and [s.name for s in run.steps] == ["prepare", "finish"]
    with pytest.raises(InvalidInputs, match="is succeeded: retry takes failed and gave_up"):
        retry_in_fleet("f", replica, wait_s=1)


def test_requests_without_a_node_wait_in_the_entry_for_the_next_owner(
        tmp_path: Path, nodes: Callable[[str], _Running]) -> None:
    replica = str(tmp_path / "replica")
    submit("request_agents:slow_steps", {"q": {"n": 2, "seconds": 0.01}}, replica)
    assert cancel_in_fleet("q", replica, wait_s=0).outcome == "cancelled"  # queued, never ran: done at once
    submit("request_agents:slow_steps", {"h": {"n": 100, "seconds": 0.1}}, replica)
    n1 = nodes("n1")
    wait_for(lambda: _steps_done(tmp_path / "n1", "h") >= 2, 60, "the agent running")
    n1.stop()  # a drain: its agent is handed back, its run open
    assert _entries(replica)["h"].node is None
    pending = cancel_in_fleet("h", replica, reason="no longer needed", wait_s=0.5)
    assert (pending.outcome, pending.done) == ("requested", False)
    before = _steps_done(tmp_path / "n1", "h")
    nodes("n2")  # claims it because of the request, and cancels it instead of running it
    wait_for(lambda: _entries(replica)["h"].status == "cancelled", 60, "the next owner cancelling it")
    entries = _entries(replica)
    assert entries["q"].status == "cancelled"  # a node never ran the cancelled queued agent
    assert not (tmp_path / "n2" / "q.db").exists()
    restore_agent("h", tmp_path / "elsewhere", replica)
    (run,) = inspect_agent(tmp_path / "elsewhere", "h").runs
    assert run.run.status == "cancelled" and len(run.steps) == before  # not one step more


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTSHARDS_")}
    result = subprocess.run([sys.executable, "-m", "agentshards", *args], capture_output=True, text=True, cwd=cwd,
                            env=env, timeout=120)
    assert "Traceback" not in result.stderr, result.stderr
    return result


def test_the_cli_through_the_prefix(tmp_path: Path) -> None:
    replica = str(tmp_path / "replica")
    no_replica = _cli("cancel", "x", "--fleet", cwd=tmp_path)
    assert no_replica.returncode == 2 and "pass --replica" in no_replica.stderr
    submit("request_agents:slow_steps", {"q": {"n": 2, "seconds": 0.01}}, replica)
    missing = _cli("retry", "nobody", "--fleet", "--replica", replica, cwd=tmp_path)
    assert missing.returncode == 2 and "no agent with this id" in missing.stderr
    done = _cli("cancel", "q", "--fleet", "--replica", replica, "--json", cwd=tmp_path)
    assert done.returncode == 0 and json.loads(done.stdout)["outcome"] == "cancelled"
    again = _cli("cancel", "q", "--fleet", "--replica", replica, cwd=tmp_path)
    assert again.returncode == 2 and "has ended (cancelled)" in again.stderr
    submit("request_agents:slow_steps", {"r": {"n": 2, "seconds": 0.01}}, replica)
    # an agent a node owns whose lease looks alive (it is not, and nothing expires it within the wait): the
    # request waits in its entry for that node or the next owner
    target = parse_replica(replica)
    store = store_for(target, {})
    store.put(target.node_key("ghost"), b"{}")
    queued = read_manifest(store, target, "r")
    assert queued is not None
    write_manifest(store, target, replace(queued, node="ghost", generation=1))
    pending = _cli("delete", "r", "--fleet", "--replica", replica, "--yes", "--wait", "0.5", cwd=tmp_path)
    assert pending.returncode == 3 and "nothing was deleted, and no node claims it" in pending.stdout
    assert getattr(read_manifest(store, target, "r"), "request", None) == "delete"


def test_a_cancel_stops_the_agent_even_if_its_code_swallows_the_refusal_and_spares_its_worker_mates(
        tmp_path: Path) -> None:
    """The cancelled agent shares its worker: SIGTERM makes the worker refuse new steps; the agent's code
    catches every refusal and returns, yet its run is recorded cancelled, not succeeded; the other agent of
    the worker starts again without a restart counted against it."""
    fleet = Fleet(tmp_path / "d", app_dir=TESTS_DIR, config=SupervisorConfig(agents_per_worker=2))
    fleet.launch("request_agents:swallows", {"greedy": {"n": 200, "seconds": 0.05},
                                              "mate": {"n": 30, "seconds": 0.05}})  # one worker: one target
    cancelled = threading.Event()

    def cancel_when_running() -> None:
        wait_for(lambda: _steps_done(tmp_path / "d", "greedy") >= 3, 60, "the agent running")
        assert fleet.cancel("greedy", "stopped by the test")
        cancelled.set()

    helper = threading.Thread(target=cancel_when_running)
    helper.start()
    results = fleet.wait(timeout_s=120)
    helper.join()
    assert cancelled.is_set()
    assert isinstance(results["greedy"], AgentFailed) and results["greedy"].error_type == "Cancelled"
    assert results["mate"] == "30 steps"  # the refusals it swallowed left its run open: resumed, then done
    (run,) = inspect_agent(tmp_path / "d", "greedy").runs
    assert run.run.status == "cancelled" and len(run.steps) < 200
    assert fleet.status()["mate"].restarts == 0

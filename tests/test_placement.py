"""Which node claims which agent: nodes sharing a prefix split what is claimable among themselves.

Nodes run in threads of the test process (their workers are real processes) on a directory replica."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from agentshards import Node, list_fleet, submit
from agentshards._replication.nodes import list_nodes
from agentshards._replication.objectstore import ObjectStore, store_for
from agentshards._replication.replica import ReplicaTarget, parse_replica

from agent_process import TESTS_DIR, wait_for


@pytest.fixture
def start_node(tmp_path: Path) -> Iterator[Callable[..., Node]]:
    started: list[tuple[Node, threading.Thread]] = []

    def start(name: str, **kwargs: object) -> Node:
        node = Node(tmp_path / name, str(tmp_path / "replica"), node_id=name, app_dir=TESTS_DIR, lease_ttl_s=6.0,
                    scan_every_s=0.3, **kwargs)  # type: ignore[arg-type]
        thread = threading.Thread(target=node.run)
        thread.start()
        started.append((node, thread))
        return node

    yield start
    for node, thread in started:
        node.stop()
        thread.join(timeout=60)
        assert not thread.is_alive()


def _succeeded(replica: str, agents: set[str]) -> bool:
    entries = {e.agent_id: e for e in list_fleet(replica)}
    return all(agent in entries and entries[agent].status == "succeeded" for agent in agents)


def test_two_nodes_split_a_submission_without_claiming_one_agent_twice(
        tmp_path: Path, start_node: Callable[..., Node]) -> None:
    replica = str(tmp_path / "replica")
    a, b = start_node("a"), start_node("b")
    target, store = _store(replica)
    wait_for(lambda: {n.node_id for n in list_nodes(store, target)} == {"a", "b"}, 20, "both leases")
    agents = {f"p{i:02d}" for i in range(40)}
    assert set(submit("request_agents:slow_steps", {agent: {"n": 1, "seconds": 0.0} for agent in agents},
                      replica).values()) == {"queued"}
    wait_for(lambda: _succeeded(replica, agents), 120, "every agent succeeded")
    assert not set(a.claimed) & set(b.claimed)  # no agent claimed by both (one writer, and no race lost)
    assert set(a.claimed) | set(b.claimed) == agents
    assert len(a.claimed) >= 8 and len(b.claimed) >= 8, (len(a.claimed), len(b.claimed))  # split, not 40 to 0


def test_agents_placed_on_a_node_that_does_not_claim_them_are_taken_after_two_scans(
        tmp_path: Path, start_node: Callable[..., Node]) -> None:
    replica = str(tmp_path / "replica")
    target, store = _store(replica)
    # a node with room whose lease is live but which never scans: half the agents hash to it
    store.put(target.node_key("ghost"), json.dumps({"owner": "ghost", "seq": 1, "ttl_s": 600, "margin_s": 100,
                                                    "expires_at": time.time() + 600, "capacity": 100}).encode())
    agents = {f"q{i:02d}" for i in range(12)}
    assert set(submit("request_agents:slow_steps", {agent: {"n": 1, "seconds": 0.0} for agent in agents},
                      replica).values()) == {"queued"}
    a = start_node("a")
    wait_for(lambda: _succeeded(replica, agents), 120, "every agent succeeded on the node that scans")
    assert sorted(a.claimed) == sorted(agents)


def _store(replica: str) -> tuple[ReplicaTarget, ObjectStore]:
    target = parse_replica(replica, {})
    return target, store_for(target, {})

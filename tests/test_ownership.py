"""The ownership protocol's rules, one by one, on the directory store (its conditional writes are the same
contract as S3's, see test_objectstore.py) with an injected clock: claims, fenced writes, expiry."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from agentshards import AgentOwned, LeaseError, OwnershipLost
from agentshards._fleet.claims import Claims
from agentshards._replication.lease import Lease, LeaseConfig
from agentshards._replication.lease_keeper import LeaseKeeper
from agentshards._replication.manifest import ManifestEntry
from agentshards._replication.nodes import TOMBSTONE, NodeWatch
from agentshards._replication.objectstore import LocalStore
from agentshards._replication.ownership import Ownership
from agentshards._replication.replica import parse_replica


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _entry(agent_id: str = "a") -> ManifestEntry:
    return ManifestEntry(agent_id=agent_id, status="running", target="m:f", input_digest="d", run_id="",
                         code_fingerprint=None, steps=0, updated_at=time.time())


@pytest.fixture
def prefix(tmp_path: Path) -> tuple[LocalStore, object]:
    target = parse_replica(str(tmp_path / "replica"))
    return LocalStore(tmp_path / "replica"), target


def _lease(store: LocalStore, target: object, node: str, clock: Clock, ttl: float = 30.0) -> Lease:
    lease = Lease(store, target, LeaseConfig(ttl), owner=node, key=target.node_key(node), clock=clock)  # type: ignore[attr-defined]
    lease.acquire()
    return lease


def test_a_claim_raises_the_generation_and_fences_every_later_write_of_the_previous_owner(prefix: tuple) -> None:
    store, target = prefix
    first, second = Ownership(store, target, "n1", "dir1"), Ownership(store, target, "n2", "dir2")
    created = first.create(_entry())
    assert created is not None and (created.entry.node, created.entry.generation, created.entry.live) == ("n1", 1, 0)
    assert first.update("a", live=1).live == 1
    seen = second.read("a")
    assert seen is not None
    claimed = second.claim(seen)
    assert claimed is not None and (claimed.entry.node, claimed.entry.generation) == ("n2", 2)
    assert claimed.entry.live == 1  # restore still reads generation 1 until generation 2 holds a snapshot
    with pytest.raises(OwnershipLost, match="node n2 \\(generation 2\\)"):
        first.update("a", status="succeeded")
    assert not first.holds("a")
    assert second.read("a").entry.status == "running"  # type: ignore[union-attr]  # the stale write never landed


def test_two_nodes_claiming_from_the_same_version_one_wins(prefix: tuple) -> None:
    store, target = prefix
    Ownership(store, target, "submit", "").create(_entry(), owned=False)
    a, b = Ownership(store, target, "na", "x"), Ownership(store, target, "nb", "y")
    seen_a, seen_b = a.read("a"), b.read("a")
    assert seen_a is not None and seen_b is not None
    assert a.claim(seen_a) is not None
    assert b.claim(seen_b) is None  # the ETag it read is gone: it leaves the agent alone
    assert b.read("a").entry.node == "na"  # type: ignore[union-attr]


def test_creating_an_existing_entry_is_refused(prefix: tuple) -> None:
    store, target = prefix
    assert Ownership(store, target, "n1", "d").create(_entry()) is not None
    assert Ownership(store, target, "n2", "d").create(_entry()) is None


def test_an_owner_whose_own_write_landed_unseen_keeps_the_agent(prefix: tuple) -> None:
    """A write of this node that the store applied but whose answer was lost left another ETag than the one
    this node remembers: the entry still names this node and generation, so the next write goes on top."""
    store, target = prefix
    owner = Ownership(store, target, "n1", "d")
    owner.create(_entry())
    key = target.manifest_key("a")  # type: ignore[attr-defined]
    data = json.loads(store.get(key))
    store.put(key, json.dumps({**data, "steps": 3}, sort_keys=True).encode())  # "our" write, answer lost
    assert owner.update("a", steps=4).steps == 4


def test_an_operators_request_survives_the_owners_writes_until_one_settles_it(prefix: tuple) -> None:
    """The owner's next write meets the operator's (412), reads again and writes with the request kept; the
    publish that settles it clears a cancel, never a delete (only the deleting command settles that)."""
    store, target = prefix
    owner = Ownership(store, target, "n1", "d")
    owner.create(_entry())
    key = target.manifest_key("a")  # type: ignore[attr-defined]
    for request in ("cancel", "delete"):
        data = json.loads(store.get(key))
        store.put(key, json.dumps({**data, "request": request, "request_reason": "why"}, sort_keys=True).encode())
        assert owner.update("a", steps=5).request == request
        assert owner.read("a").entry.request == request  # type: ignore[union-attr]
        settled = owner.update("a", status="cancelled", request=None, request_reason=None)
        assert settled.request == (None if request == "cancel" else "delete")
        data = json.loads(store.get(key))
        store.put(key, json.dumps({**data, "request": request}, sort_keys=True).encode())
        kept = owner.update("a", status="cancelled", request=None, request_reason=None)
        assert kept.request == (None if request == "cancel" else "delete")


def test_a_node_is_expired_only_after_its_lease_stayed_unchanged_for_ttl_plus_margin(prefix: tuple) -> None:
    store, target = prefix
    clock = Clock()
    lease = _lease(store, target, "old", clock, ttl=30.0)
    watch = NodeWatch(store, target, clock=clock)
    watch.refresh()
    assert not watch.gone("old")
    clock.now += 34.9  # TTL 30 + margin 5 not yet passed on the watcher's clock
    assert watch.overdue("old") > 0 and not watch.expire("old")
    clock.now += 0.2
    assert watch.expire("old") and watch.gone("old")
    assert store.get(target.node_key("old")) == TOMBSTONE  # type: ignore[attr-defined]
    with pytest.raises(LeaseError, match="expired it"):  # the holder's next renewal is refused
        lease.renew()


def test_a_node_that_renews_while_watched_is_alive(prefix: tuple) -> None:
    store, target = prefix
    clock = Clock()
    lease = _lease(store, target, "busy", clock)
    watch = NodeWatch(store, target, clock=clock)
    watch.refresh()
    clock.now += 20
    lease.renew()
    watch.refresh()
    clock.now += 20  # 40 s since the first look, 20 s since the renewal
    assert watch.overdue("busy") > 0 and not watch.expire("busy")
    lease.renew()
    assert store.get(target.node_key("busy")) != TOMBSTONE  # type: ignore[attr-defined]


def test_a_renewal_landing_between_the_watch_and_the_tombstone_keeps_the_node(prefix: tuple) -> None:
    store, target = prefix
    clock = Clock()
    lease = _lease(store, target, "late", clock)
    watch = NodeWatch(store, target, clock=clock)
    watch.refresh()
    clock.now += 40
    lease.renew()  # after the watcher's last LIST, before its tombstone
    assert not watch.expire("late")  # If-Match on the watched ETag fails: alive
    lease.renew()


def test_a_node_without_a_lease_object_is_gone(prefix: tuple) -> None:
    store, target = prefix
    watch = NodeWatch(store, target)
    watch.refresh()
    assert watch.gone("left-cleanly") and watch.gone(None)


def test_claims_refuse_an_agent_a_live_node_owns_and_name_it(tmp_path: Path, prefix: tuple) -> None:
    store, target = prefix
    clock = Clock()
    _lease(store, target, "owner", clock)
    Ownership(store, target, "owner", "d").create(_entry())
    keeper = LeaseKeeper(Lease(store, target, LeaseConfig(30.0), owner="me", key=target.node_key("me")))  # type: ignore[attr-defined]
    claims = Claims(keeper, Ownership(store, target, "me", "mine"), NodeWatch(store, target), take_over=False)
    with pytest.raises(AgentOwned, match="node owner owns it") as refused:
        claims.claim("a", {"status": "running"})
    assert refused.value.node == "owner" and refused.value.agent_id == "a"


def test_a_node_claims_only_what_is_still_claimable_when_it_claims(prefix: tuple) -> None:
    """An operator cancelled a queued agent after a node's scan listed it: the claim reads the entry again and
    leaves it alone (without the check, the claim wrote ``running`` over ``cancelled`` and ran it)."""
    from agentshards._fleet.requests import claimable_with

    store, target = prefix
    Ownership(store, target, "submit", "").create(_entry(), owned=False)
    key = target.manifest_key("a")  # type: ignore[attr-defined]
    store.put(key, json.dumps({**json.loads(store.get(key)), "status": "cancelled"}, sort_keys=True).encode())
    keeper = LeaseKeeper(Lease(store, target, LeaseConfig(30.0), owner="me", key=target.node_key("me")))  # type: ignore[attr-defined]
    claims = Claims(keeper, Ownership(store, target, "me", "mine"), NodeWatch(store, target), take_over=False)
    claims.admit = claimable_with
    with pytest.raises(AgentOwned, match="no longer claimable \\(cancelled\\)"):
        claims.claim("a", {"status": "running"})
    assert json.loads(store.get(key))["status"] == "cancelled" and json.loads(store.get(key))["node"] is None
